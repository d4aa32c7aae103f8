// Both stores down (a private redis-server killed, a private PostgreSQL cluster stopped): each
// FAIL_MODE does what it says, visibly, logs the transition once, and recovers.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startPrivatePostgres, startPrivateRedis } from './helpers/private-stores.ts'
import { startUpstream } from './helpers/upstream.ts'

t.test('both stores down: local, open and closed fail modes', async (t) => {
  const [pg, redis, upstream] = await Promise.all([startPrivatePostgres(t), startPrivateRedis(t), startUpstream(t)])
  const start = (mode: string) => startTestGateway(t, {
    databaseUrl: pg.url,
    redisUrl: redis.url,
    upstreamUrl: upstream.url,
    config: { limits: { capacity: 10, refillPerSecond: 0.01 }, fallback: { mode, localReplicas: 2, probeIntervalMs: 200 }, control: { readiness: 'deciding' } }
  })
  const local = await start('local')
  const open = await start('open')
  const closed = await start('closed')
  const all = [local, open, closed]
  for (const gw of all) t.equal((await send(gw.proxyUrl + '/warm', { user: 'warm' })).status, 201, 'healthy before the outage')

  await redis.kill()
  await pg.stop()

  await t.test('local: in-process buckets with capacity / replicas, still enforced', async (t) => {
    const replies = []
    for (let i = 0; i < 8; i++) replies.push(await send(local.proxyUrl + '/x', { user: 'lonely' }))
    t.same(replies.map((r) => r.status), [201, 201, 201, 201, 201, 429, 429, 429], 'a 10-token bucket shared by 2 replicas: 5 here')
    t.same([...new Set(replies.map((r) => r.headers.get('x-data-source')))], ['local-fallback'])
    const blocked = replies.at(-1)!
    t.match(blocked.headers.get('content-type'), /^application\/problem\+json/)
    t.equal(blocked.headers.get('retry-after'), '200', 'one token of a 0.005/s share: 200 s')
    t.equal(blocked.headers.get('ratelimit-policy'), '"default";q=10;w=1000', 'the configured policy is still announced')
    const other = await send(local.proxyUrl + '/x', { user: 'other' })
    t.equal(other.status, 201, 'buckets stay per caller')
  })

  await t.test('open: forwarded without limits, marked fail-open', async (t) => {
    const before = upstream.received.length
    const replies = await Promise.all(Array.from({ length: 15 }, () => send(open.proxyUrl + '/x', { user: 'flood' })))
    t.same([...new Set(replies.map((r) => r.status))], [201], 'every request forwarded')
    t.same([...new Set(replies.map((r) => r.headers.get('x-data-source')))], ['fail-open'])
    t.equal(upstream.received.length - before, 15)
  })

  await t.test('closed: 503 problem+json with Retry-After, nothing forwarded', async (t) => {
    const before = upstream.received.length
    const res = await send(closed.proxyUrl + '/x', { user: 'shut' })
    t.equal(res.status, 503)
    t.match(res.headers.get('content-type'), /^application\/problem\+json/)
    t.equal(res.headers.get('retry-after'), '1')
    t.match(res.json().detail, /cannot reach its stores/)
    t.equal(res.json().type, 'https://iana.org/assignments/http-problem-types#temporary-reduced-capacity', 'the IANA problem type')
    const check = await fetch(closed.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"key":"shut"}' })
    t.equal(check.status, 503, 'the check endpoint too')
    t.equal(check.headers.get('retry-after'), '1')
    await send(closed.proxyUrl + '/x', { user: 'shut' })
    t.equal(upstream.received.length, before)
  })

  for (const [gw, mode, events] of [[local, 'local', 9], [open, 'open', 15], [closed, 'closed', 3]] as const) {
    const metrics = await (await fetch(gw.controlUrl + '/metrics')).text()
    t.match(metrics, new RegExp(`gateway_fail_mode_events_total\\{mode="${mode}"\\} ${events}\\b`), `${mode}: every request counted`)
    t.match(metrics, new RegExp(`gateway_fail_mode_active\\{mode="${mode}"\\} 1`), `${mode}: shown as active`)
    t.equal(gw.logs.filter((l) => l.mode === mode && l.msg.startsWith('PostgreSQL and Redis unreachable')).length, 1, `${mode}: logged once, not per request`)
  }
  // Readiness "deciding": in service as long as the fail mode still answers requests.
  for (const [gw, status, deciding] of [[local, 200, 'local-fallback'], [open, 200, 'fail-open'], [closed, 503, 'none']] as const) {
    const ready = await send(gw.controlUrl + '/readyz')
    t.same([ready.status, ready.json()], [status, { status: status === 200 ? 'ready' : 'not ready', postgres: 'down', redis: 'down', deciding }],
      `${gw.config.fallback.mode}: readiness ${status} (${deciding})`)
  }

  await Promise.all([redis.start(), pg.start()])
  for (const gw of all) {
    await waitFor(() => gw.limiter.mode === 'postgres' && !gw.limiter.postgresDown, { timeoutMs: 15_000, what: 'recovery' })
    const res = await send(gw.proxyUrl + '/x', { user: 'after-' + gw.config.fallback.mode })
    t.equal(res.status, 201)
    t.equal(res.headers.get('x-data-source'), 'new-user', `${gw.config.fallback.mode}: PostgreSQL decides again`)
    t.equal(gw.logs.filter((l) => l.msg === 'PostgreSQL decides again').length, 1, 'recovery logged once')
  }
  await waitFor(async () => (await send(local.proxyUrl + '/x', { user: 'after-local' })).headers.get('x-data-source') === 'redis',
    { timeoutMs: 10_000, what: 'the cache to be used again' })
})
