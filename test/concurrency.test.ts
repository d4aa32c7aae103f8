// Concurrency limits (policy concurrency: N) through real gateways sharing real Redis and
// PostgreSQL: N slow requests pass and the N+1th is refused, across two gateways; the slots
// free when the responses end; a SIGKILLed gateway's slots are free again within one lease.
import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnGateway, startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { freePort } from './helpers/private-stores.ts'
import { rateLimitOf } from './helpers/ratelimit.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const POLICIES = {
  policies: { burst: { capacity: 100, refillPerSecond: 10 }, inflight: { concurrency: 3 } },
  defaultPolicy: ['burst', 'inflight']
}

t.test('N slow requests pass across two gateways, the N+1th is refused with Retry-After 1; slots free when responses end', async (t) => {
  const upstream = await startUpstream(t)
  const databaseUrl = await createTestDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  const [a, b] = await Promise.all([0, 1].map(async () => await startTestGateway(t, { databaseUrl, redisPrefix, upstreamUrl: upstream.url, config: POLICIES })))
  const slow = [a!, a!, b!].map(async (gw) => await send(gw.proxyUrl + '/slow/1500', { user: 'cc-ann' }))
  await waitFor(() => upstream.received.filter((r) => r.url === '/slow/1500').length === 3, { what: 'three requests in flight' })
  const refused = await send(b!.proxyUrl + '/x', { user: 'cc-ann' })
  t.equal(refused.status, 429, 'the fourth in flight is refused, on either gateway')
  t.equal(refused.headers.get('retry-after'), '1')
  t.same(refused.json()['violated-policies'], ['inflight'])
  const rl = rateLimitOf(refused.headers)
  t.same(rl.policy, [{ name: 'inflight', params: { q: 3, qu: 'concurrent-requests' } }], 'a concurrency policy carries qu="concurrent-requests"')
  t.same(rl.limit, [{ name: 'inflight', params: { r: 0, t: 1 } }])
  t.equal((await send(a!.proxyUrl + '/x', { user: 'cc-ben' })).status, 201, 'other callers have their own slots')

  const done = await Promise.all(slow)
  t.same(done.map((r) => r.status), [200, 200, 200])
  const during = rateLimitOf(done[0]!.headers)
  t.same(during.policy.map((p) => p.name).sort(), ['burst', 'inflight'], 'both policies in the fields')
  const after = await send(a!.proxyUrl + '/x', { user: 'cc-ann' })
  t.equal(after.status, 201, 'the slots were released when the responses ended')
  t.equal(rateLimitOf(after.headers).limit.find((p) => p.name === 'inflight')!.params.r, 2, 'r: free slots while this one is in flight')
  t.equal(upstream.received.filter((r) => r.url === '/x' && r.headers['x-user-id'] === 'cc-ann').length, 1, 'the refused request was not forwarded')
  const metrics = (await send(a!.controlUrl + '/metrics')).body
  t.match(metrics, /gateway_concurrency_slots_total\{policy="inflight",result="acquired",decided_by="redis"\} [1-9]/)
})

t.test('a client that leaves frees its slot', async (t) => {
  const gw = await startTestGateway(t, { config: { ...POLICIES, policies: { ...POLICIES.policies, inflight: { concurrency: 1 } } } })
  const controller = new AbortController()
  const gone = send(gw.proxyUrl + '/slow/5000', { user: 'cc-cat', signal: controller.signal }).catch(() => null)
  await waitFor(() => gw.upstream!.received.some((r) => r.url === '/slow/5000'), { what: 'the slow request in flight' })
  t.equal((await send(gw.proxyUrl + '/x', { user: 'cc-cat' })).status, 429, 'the one slot is taken')
  controller.abort()
  await gone
  await waitFor(async () => (await send(gw.proxyUrl + '/x', { user: 'cc-cat' })).status === 201, { what: 'the slot freed after the client left' })
  t.pass('freed')
})

t.test('a SIGKILLed gateway\'s slots are free again within one lease (redis.leaseMs)', async (t) => {
  const upstream = await startUpstream(t)
  const databaseUrl = await createTestDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  const leaseMs = 1500
  const dir = mkdtempSync(join(tmpdir(), 'cc-'))
  const file = join(dir, 'config.json')
  writeFileSync(file, JSON.stringify({ ...POLICIES, redis: { leaseMs } }))
  const doomed = await spawnGateway(t, { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix, UPSTREAM_URL: upstream.url, CONFIG_FILE: file })
  const survivor = await startTestGateway(t, { databaseUrl, redisPrefix, upstreamUrl: upstream.url, config: { ...POLICIES, redis: { leaseMs } } })
  const held = [0, 1, 2].map(async () => await send(doomed.proxyUrl + '/slow/6000', { user: 'cc-dan' }).catch(() => null))
  await waitFor(() => upstream.received.filter((r) => r.url === '/slow/6000').length === 3, { what: 'three slots held by the doomed gateway' })
  // Held past one lease: the doomed gateway renews its leases while it lives.
  await new Promise((resolve) => setTimeout(resolve, leaseMs + 500))
  t.equal((await send(survivor.proxyUrl + '/x', { user: 'cc-dan' })).status, 429, 'renewed leases outlive leaseMs while their gateway lives')
  await doomed.stop('SIGKILL')
  const killedAt = Date.now()
  await Promise.all(held)
  await waitFor(async () => (await send(survivor.proxyUrl + '/x', { user: 'cc-dan' })).status === 201, { what: 'the dead gateway\'s slots to expire', timeoutMs: leaseMs + 3000 })
  const freedAfter = Date.now() - killedAt
  t.ok(freedAfter <= leaseMs + 500, `free again ${freedAfter} ms after the kill (lease ${leaseMs} ms)`)
})

t.test('Redis unavailable: each gateway enforces N / FAIL_LOCAL_REPLICAS on its own', async (t) => {
  const gw = await startTestGateway(t, {
    redisUrl: `redis://127.0.0.1:${await freePort()}`,
    config: { ...POLICIES, policies: { ...POLICIES.policies, inflight: { concurrency: 4 } }, fallback: { localReplicas: 2 } }
  })
  const slow = [0, 1].map(async () => await send(gw.proxyUrl + '/slow/1500', { user: 'cc-eve' }))
  await waitFor(() => gw.upstream!.received.filter((r) => r.url === '/slow/1500').length === 2, { what: 'two requests in flight' })
  const refused = await send(gw.proxyUrl + '/x', { user: 'cc-eve' })
  t.equal(refused.status, 429, 'this gateway\'s share of 4 over 2 replicas is 2')
  t.same(rateLimitOf(refused.headers).policy, [{ name: 'inflight', params: { q: 2, qu: 'concurrent-requests' } }], 'the share is announced')
  t.same((await Promise.all(slow)).map((r) => r.status), [200, 200])
  t.equal((await send(gw.proxyUrl + '/x', { user: 'cc-eve' })).status, 201, 'freed locally')
  t.match((await send(gw.controlUrl + '/metrics')).body, /gateway_concurrency_slots_total\{policy="inflight",result="refused",decided_by="gateway"\} 1/)
})
