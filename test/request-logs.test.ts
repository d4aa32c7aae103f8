// Logs an operator can use: the request id on every line of a request and passed upstream,
// credentials redacted, store outages logged once per transition, LOG_LEVEL honoured.
import { Writable } from 'node:stream'
import t from 'tap'
import { createLogger, REDACTED_PATHS } from '../src/observability/log.ts'
import { spawnGateway, startTestGateway, type LogLine } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startTcpRelay } from './helpers/faults.ts'
import { startPrivateRedis } from './helpers/private-stores.ts'
import { parseExposition } from './helpers/prometheus.ts'
import { createRedisPrefix, createTestDatabase } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

t.test('a client-given request id reaches the upstream and is on every log line of the request', async (t) => {
  const gw = await startTestGateway(t, { logLevel: 'debug', config: { limits: { capacity: 1 } } })
  for (const [id, status] of [['client-req-0001', 201], ['client-req-0002', 429]] as const) {
    const before = gw.logs.length
    const res = await send(gw.proxyUrl + '/traced?x=1', { user: 'tracer', headers: { 'x-request-id': id } })
    t.equal(res.status, status)
    t.equal(res.headers.get('x-request-id'), id, 'echoed to the client')
    await waitFor(() => gw.logs.slice(before).some((l) => l.msg === 'request completed'), { what: 'the request\'s last log line' })
    const lines = gw.logs.slice(before)
    t.ok(lines.length >= 3, `${lines.length} log lines for the request`)
    for (const line of lines) t.equal(line.request_id, id, `"${line.msg}" carries the request id`)
    t.ok(lines.some((l) => l.msg === (status === 201 ? 'rate limit allowed' : 'rate limit exceeded')), 'including the decision')
  }
  t.equal(gw.upstream!.received.length, 1, 'only the allowed request was forwarded')
  t.equal(gw.upstream!.received[0]!.headers['x-request-id'], 'client-req-0001', 'the upstream got the same id')
})

t.test('without a usable request id one is generated, forwarded and logged', async (t) => {
  const gw = await startTestGateway(t, { logLevel: 'debug' })
  const cases: Array<[string, Record<string, string>]> = [
    ['none given', {}],
    ['too long', { 'x-request-id': 'x'.repeat(201) }],
    ['with a space', { 'x-request-id': 'two words' }]
  ]
  for (const [what, headers] of cases) {
    const before = gw.upstream!.received.length
    const res = await send(gw.proxyUrl + '/gen', { user: 'gen', headers })
    const id = res.headers.get('x-request-id')!
    t.match(id, UUID, `${what}: a fresh UUID`)
    t.equal(gw.upstream!.received[before]!.headers['x-request-id'], id, `${what}: forwarded`)
    await waitFor(() => gw.logs.some((l) => l.request_id === id && l.msg === 'request completed'), { what: 'the request\'s log lines' })
  }
  const rejected = await send(gw.proxyUrl + '/gen', { headers: { 'x-request-id': 'no-caller-id' } })
  t.equal(rejected.status, 400)
  t.equal(rejected.headers.get('x-request-id'), 'no-caller-id', 'echoed on a 400 too')
  // The control port honours it too.
  const check = await fetch(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'check-77' }, body: '{"key":"k"}' })
  t.equal(check.status, 200)
  await waitFor(() => gw.logs.some((l) => l.request_id === 'check-77' && l.msg === 'request completed'), { what: 'the check\'s log lines' })
  t.ok(gw.logs.some((l) => l.request_id === 'check-77' && l.msg === 'rate limit allowed'), 'the decision line carries it')
})

t.test('authorization and cookie headers are redacted', async (t) => {
  const lines: string[] = []
  const log = createLogger('info', new Writable({ write (c: Buffer, _e, done) { lines.push(c.toString()); done() } }))
  const headers = { authorization: 'Bearer s3cret-a', cookie: 'sid=s3cret-b', 'set-cookie': 's3cret-c', 'proxy-authorization': 'Basic s3cret-d', accept: 'text/plain' }
  log.info({ req: { headers }, res: { headers }, headers, err: { headers } }, 'headers logged')
  t.notMatch(lines.join(''), /s3cret/, 'no secret in the line')
  const line = JSON.parse(lines[0]!) as { req: { headers: Record<string, string> } }
  t.same(line.req.headers, { authorization: '[redacted]', cookie: '[redacted]', 'set-cookie': '[redacted]', 'proxy-authorization': '[redacted]', accept: 'text/plain' })
  t.ok(REDACTED_PATHS.includes('req.headers["authorization"]'))

  // End to end, at debug level, through an allowed request, a blocked one and a 502.
  const gw = await startTestGateway(t, { logLevel: 'debug', upstreamUrl: 'http://127.0.0.1:1', config: { limits: { capacity: 1 } } })
  const secret = { authorization: 'Bearer s3cret-token', cookie: 'session=s3cret-cookie' }
  t.equal((await send(gw.proxyUrl + '/a', { user: 'redact', headers: secret })).status, 502)
  t.equal((await send(gw.proxyUrl + '/a', { user: 'redact', headers: secret })).status, 429)
  await waitFor(() => gw.logs.filter((l) => l.msg === 'request completed').length === 2, { what: 'both requests logged' })
  t.ok(gw.logs.some((l) => l.msg === 'upstream unreachable'), 'the 502 was logged')
  t.notMatch(JSON.stringify(gw.logs), /s3cret/, 'no credential in any log line')
})

const storeEvents = (logs: LogLine[], store: string): string[] =>
  logs.filter((l) => l.store === store || (typeof l.msg === 'string' && l.msg.startsWith('Connected to'))).map((l) => l.msg)
    .filter((m) => m.includes(store === 'redis' ? 'Redis' : 'PostgreSQL'))

const gauge = async (controlUrl: string, store: string): Promise<number | undefined> =>
  parseExposition(await (await fetch(controlUrl + '/metrics')).text()).get(`gateway_store_up{store="${store}"}`)

t.test('a Redis outage is logged once when it starts and once when it ends', async (t) => {
  const redis = await startPrivateRedis(t)
  const gw = await startTestGateway(t, { redisUrl: redis.url })
  t.equal(await gauge(gw.controlUrl, 'redis'), 1)
  await redis.kill()
  await waitFor(() => gw.logs.some((l) => l.msg === 'Redis unavailable'), { what: 'the outage to be noticed' })
  for (let i = 0; i < 10; i++) t.equal((await send(gw.proxyUrl + '/r', { user: `during-${i}` })).status, 201, 'answered from PostgreSQL')
  t.equal(await gauge(gw.controlUrl, 'redis'), 0, 'gateway_store_up{store="redis"} 0')
  await redis.start()
  await waitFor(() => gw.logs.some((l) => l.msg === 'Redis recovered'), { timeoutMs: 15_000, what: 'Redis to be back' })
  for (let i = 0; i < 5; i++) t.equal((await send(gw.proxyUrl + '/r', { user: `after-${i}` })).status, 201)
  t.same(storeEvents(gw.logs, 'redis'), ['Connected to Redis successfully', 'Redis unavailable', 'Redis recovered'], 'one line per transition')
  const down = gw.logs.find((l) => l.msg === 'Redis unavailable')!
  t.match(down, { level: 50, store: 'redis', err: { message: /\S/ } }, 'the outage line carries the error')
  t.match(gw.logs.find((l) => l.msg === 'Redis recovered'), { level: 40, store: 'redis' })
  t.equal(await gauge(gw.controlUrl, 'redis'), 1)
})

t.test('a PostgreSQL outage is logged once when it starts and once when it ends', async (t) => {
  const db = new URL(await createTestDatabase(t))
  const relay = await startTcpRelay(t, db.hostname, Number(db.port || 5432))
  db.port = String(relay.port)
  const gw = await startTestGateway(t, { databaseUrl: db.toString() })
  await relay.cut()
  for (let i = 0; i < 5; i++) {
    const res = await send(gw.proxyUrl + '/p', { user: `cut-${i}` })
    // Redis decides while PostgreSQL is unreachable (docs/reliability.md).
    t.equal(res.status, 201, 'answered while PostgreSQL is unreachable')
    t.equal(res.headers.get('x-data-source'), 'redis-fallback')
  }
  t.equal(await gauge(gw.controlUrl, 'postgres'), 0)
  await relay.restore()
  await waitFor(async () => (await send(gw.proxyUrl + '/p', { user: 'back' })).headers.get('x-data-source') !== 'redis-fallback', { what: 'PostgreSQL to decide again' })
  for (let i = 0; i < 3; i++) t.equal((await send(gw.proxyUrl + '/p', { user: `back-${i}` })).status, 201)
  t.same(storeEvents(gw.logs, 'postgres'), ['Connected to PostgreSQL successfully', 'PostgreSQL unavailable', 'PostgreSQL recovered'], 'one line per transition')
  t.match(gw.logs.find((l) => l.msg === 'PostgreSQL unavailable'), { level: 50, store: 'postgres', err: { message: /\S/ } })
  t.equal(await gauge(gw.controlUrl, 'postgres'), 1)
})

t.test('LOG_LEVEL: debug in the real process logs each request with its id; warn drops info lines', async (t) => {
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, { DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url, LOG_LEVEL: 'debug' })
  await send(gw.proxyUrl + '/spawned', { user: 'proc', headers: { 'x-request-id': 'proc-req-9' } })
  const lines = (): Array<Record<string, unknown>> => gw.output.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
  await waitFor(() => lines().some((l) => l.request_id === 'proc-req-9' && l.msg === 'request completed'), { what: 'the request\'s log lines' })
  t.match(lines().find((l) => l.msg === 'rate limit allowed'), { request_id: 'proc-req-9', user_id: 'proc', source: 'new-user' })
  t.equal(upstream.received[0]!.headers['x-request-id'], 'proc-req-9')

  const quiet = await startTestGateway(t, { logLevel: 'warn' })
  await send(quiet.proxyUrl + '/q', { user: 'quiet' })
  t.same(quiet.logs.filter((l) => l.level < 40), [], 'nothing below warn')
})

t.test('a 502 at the default level: one warn line with the cause, no stack, no statusCode 500', async (t) => {
  const gw = await startTestGateway(t, { upstreamUrl: 'http://127.0.0.1:1' })
  const before = gw.logs.length
  const r = await send(gw.proxyUrl + '/a', { user: 'u502' })
  t.equal(r.status, 502)
  await waitFor(() => gw.logs.length > before, { what: 'the 502 logged' })
  const lines = gw.logs.slice(before)
  t.equal(lines.length, 1, 'one line: ' + JSON.stringify(lines))
  t.match(lines[0], { level: 40, msg: 'upstream unreachable', cause: /ECONNREFUSED/, code: 'ECONNREFUSED', status: 502, upstream: 'http://127.0.0.1:1' })
  t.notMatch(JSON.stringify(lines), /stack|statusCode|"status":500/, 'no stack trace and no 500')
})
