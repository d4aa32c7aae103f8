// Bad and hostile input on the paths this issue adds: while Redis decides (PostgreSQL down) and
// through the hand-back; the fail-mode configuration; the control port's bind address.
// (Caller-id, check-endpoint and config basics with both stores up: identity, control and
// config tests.)
import { connect } from 'node:net'
import { networkInterfaces } from 'node:os'
import t from 'tap'
import { Redis } from 'ioredis'
import { loadConfig } from '../src/config/load.ts'
import { spawnGateway, startTestGateway } from './helpers/gateway.ts'
import { rawStatus, send, waitFor } from './helpers/http.ts'
import { startPrivatePostgres } from './helpers/private-stores.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './helpers/stores.ts'

t.test('fail-mode configuration errors name the field', async (t) => {
  const cases: Array<[string, Record<string, string>, Record<string, unknown> | undefined, RegExp]> = [
    ['unknown mode', { FAIL_MODE: 'sometimes' }, undefined, /fallback\.mode: .*(from FAIL_MODE)/],
    ['zero replicas', { FAIL_LOCAL_REPLICAS: '0' }, undefined, /fallback\.localReplicas: .*(from FAIL_LOCAL_REPLICAS)/],
    ['fractional replicas', { FAIL_LOCAL_REPLICAS: '1.5' }, undefined, /fallback\.localReplicas/],
    ['not a number', { FAIL_LOCAL_REPLICAS: 'three' }, undefined, /FAIL_LOCAL_REPLICAS=three: must be a number/],
    ['unknown field', {}, { fallback: { mod: 'open' } }, /fallback\.mod\b/],
    ['probe interval out of range', {}, { fallback: { probeIntervalMs: 0 } }, /fallback\.probeIntervalMs/]
  ]
  for (const [name, env, overrides, message] of cases) {
    t.throws(() => loadConfig({ env, overrides }), { name: 'ConfigError', message }, name)
  }
  t.match(loadConfig({ env: { FAIL_MODE: 'closed', FAIL_LOCAL_REPLICAS: '3' } }).fallback, { mode: 'closed', localReplicas: 3 }, 'valid values load')
  t.match(loadConfig({ env: {} }).fallback, { mode: 'local', localReplicas: 1, redisDecides: true, redisTimeoutMs: 500 }, 'defaults')
})

t.test('while Redis decides (PostgreSQL down): bad input is refused, odd ids survive the hand-back', async (t) => {
  const pg = await startPrivatePostgres(t)
  const prefix = createRedisPrefix(t)
  const gw = await startTestGateway(t, { databaseUrl: pg.url, redisPrefix: prefix, config: { limits: { capacity: 5, refillPerSecond: 0.01 }, fallback: { probeIntervalMs: 200, redisTimeoutMs: 3000 } } })
  const port = Number(new URL(gw.proxyUrl).port)
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.disconnect())
  await pg.stop()

  const odd = ["'; DROP TABLE rate_limits; --", 'a"b\\c', '{default:victim}', 'x|1|r', '["default","x",1,1]', 'caf\u00c3\u00a9', 'a'.repeat(255)]
  for (const id of odd) {
    const replies = []
    for (let i = 0; i < 7; i++) {
      const res = await fetch(gw.proxyUrl + '/x', { headers: { 'x-user-id': id } })
      await res.arrayBuffer()
      replies.push(`${res.status} ${res.headers.get('x-data-source')}`)
    }
    t.same(replies, [...Array(5).fill('201 redis-fallback'), '429 redis-fallback', '429 redis-fallback'], `${id.slice(0, 20)}: its own bucket, decided by Redis`)
  }
  const victim = await send(gw.proxyUrl + '/x', { user: 'victim' })
  t.equal(victim.status, 201, 'an id that looks like another key does not touch that key')

  const bad: Array<[string, string | Buffer]> = [
    ['empty', 'x-user-id: \r\n'],
    ['256 bytes', `x-user-id: ${'a'.repeat(256)}\r\n`],
    ['10 KB', `x-user-id: ${'a'.repeat(10_240)}\r\n`],
    ['control character', 'x-user-id: a\u0001b\r\n'],
    ['invalid UTF-8', Buffer.concat([Buffer.from('x-user-id: caf'), Buffer.from([0xe9, 0x0d, 0x0a])])]
  ]
  for (const [name, header] of bad) {
    const head = Buffer.concat([Buffer.from('GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n'), Buffer.from(header), Buffer.from('\r\n')])
    t.equal((await rawStatus(port, head)).status, 400, `${name}: 400`)
  }
  const huge = await rawStatus(port, `GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-user-id: a\r\nx-filler: ${'b'.repeat(20_000)}\r\n\r\n`)
  t.equal(huge.status, 431, 'header block over the limit: 431')
  t.match(huge.text, /content-type: application\/problem\+json/i, 'as problem+json')
  t.match(huge.text, /"status":431/)
  const count = async (reason: string): Promise<number> =>
    (await gw.metrics.registry.getSingleMetric('gateway_rejected_requests_total')!.get()).values.find((v) => v.labels.reason === reason)?.value ?? -1
  t.equal(await count('header-too-large'), 1, 'the 431 is counted')
  const malformedBefore = await count('malformed-request')
  const garbage = await rawStatus(port, 'NOT HTTP AT ALL\r\n\r\n')
  t.equal(garbage.status, 400, 'bytes that are not HTTP: 400')
  t.equal(await count('malformed-request'), malformedBefore + 1, 'the malformed request is counted')
  const check = (body: string) => fetch(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body })
  for (const body of ['{"key": ', '{"cost": 1}', '{"key":"k","cost":0}', '{"key":"k","cost":-1}', '{"key":"k","cost":1.5}', '{"key":"k","cost":1e12}',
    JSON.stringify({ checks: Array.from({ length: 101 }, () => ({ key: 'k' })) })]) {
    const res = await check(body)
    t.equal(res.status, 400, `check ${body.slice(0, 30)}: 400`)
    await res.arrayBuffer()
  }
  const keys = await redis.keys(prefix + '{*')
  t.equal(keys.length, odd.length + 1, 'one Redis bucket per accepted caller (odd ids and victim)')
  t.same(keys.filter((k) => k.endsWith(':k}') || k.length > prefix.length + 300), [], 'none for a bad check or an oversized id')

  await pg.start()
  await waitFor(async () => !gw.limiter.postgresDown && (await redis.scard(prefix + 'redis-owned')) === 0, { timeoutMs: 15_000, what: 'hand-back' })
  const rows = await pg.query<{ user_id: string, tokens: number }>('SELECT user_id, tokens FROM rate_limits')
  const byId = new Map(rows.map((r) => [r.user_id, r.tokens]))
  for (const id of odd.map((i) => i === 'caf\u00c3\u00a9' ? 'café' : i)) {
    const tokens = byId.get(id)
    t.ok(tokens !== undefined && tokens < 0.2, `${id.slice(0, 20)}: handed back with its 5 tokens spent (${tokens?.toFixed(3)})`)
  }
  t.equal(rows.length, odd.length + 1, 'one row per caller (odd ids and victim), nothing else')
  t.equal(byId.get('default'), undefined)
  t.equal((await fetch(gw.controlUrl + '/healthz')).status, 200, 'still healthy')
})

t.test('the control port listens on loopback only by default', async (t) => {
  const external = Object.values(networkInterfaces()).flat().find((i) => i !== undefined && i.family === 'IPv4' && !i.internal)
  if (external === undefined) {
    t.pass('no non-loopback IPv4 address on this machine: nothing to check')
    return
  }
  const gw = await spawnGateway(t, { DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t), HOST: '0.0.0.0' })
  const reach = (port: string) => new Promise<string>((resolve) => {
    const socket = connect(Number(port), external.address)
    socket.on('connect', () => { socket.destroy(); resolve('connected') })
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
  })
  t.equal(await reach(new URL(gw.proxyUrl).port), 'connected', `the proxy port answers on ${external.address}`)
  t.equal(await reach(new URL(gw.controlUrl).port), 'ECONNREFUSED', `the control port does not answer on ${external.address}`)
  t.equal((await fetch(gw.controlUrl + '/healthz')).status, 200, 'but does on 127.0.0.1')
})
