// Several policies on one request (a plan: burst + hourly + monthly), all or nothing, through
// the real gateway with real PostgreSQL and Redis: allowed only if every bucket can pay; when
// any refuses none is charged; the 429 names the refusing policies; every policy appears in the
// RateLimit fields (parsed with an RFC 9651 parser), most restrictive first.
import t from 'tap'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startPrivatePostgres } from './helpers/private-stores.ts'
import { metricSum } from './helpers/metrics.ts'
import { rateLimitOf } from './helpers/ratelimit.ts'

const TOKEN = 'layered-admin-token-0123456789'
const MONTH = 30 * 24 * 3600
const PLAN = {
  burst: { capacity: 2, refillPerSecond: 0.001 },
  hourly: { capacity: 5, refillPerSecond: 5 / 3600 },
  monthly: { capacity: 50_000, refillPerSecond: 50_000 / MONTH }
}

interface Bucket { policy: string, tokens: number, remaining: number }
async function peek (gw: TestGateway, key: string): Promise<Map<string, Bucket>> {
  const res = await send(`${gw.controlUrl}/v1/buckets/${key}`, { headers: { authorization: `Bearer ${TOKEN}` } })
  const body = res.json() as { buckets: Bucket[] }
  return new Map(body.buckets.map((b) => [b.policy, b]))
}

t.test('burst + hourly + monthly: all or nothing, most restrictive first, the monthly window is 2,592,000 s', async (t) => {
  const gw = await startTestGateway(t, { config: { policies: PLAN, defaultPolicy: ['burst', 'hourly', 'monthly'], control: { adminToken: TOKEN } } })
  const first = await send(gw.proxyUrl + '/a', { user: 'plan-ann' })
  t.equal(first.status, 201)
  const rl = rateLimitOf(first.headers)
  t.same(rl.policy.map((p) => p.name), ['burst', 'hourly', 'monthly'], 'every policy, most restrictive first')
  t.same(rl.policy.map((p) => p.params), [{ q: 2, w: 2000 }, { q: 5, w: 3600 }, { q: 50_000, w: 2_592_000 }])
  t.same(rl.limit.map((p) => [p.name, p.params.r]), [['burst', 1], ['hourly', 4], ['monthly', 49_999]])
  t.ok(Math.abs((rl.limit[2]!.params.t as number) - 52) <= 1, 'monthly t: about 51.8 s to the next whole token')
  t.equal(first.headers.get('x-ratelimit-limit'), '2', 'the legacy trio describes the most restrictive policy')
  t.equal(first.headers.get('x-ratelimit-remaining'), '1')

  t.equal((await send(gw.proxyUrl + '/a', { user: 'plan-ann' })).status, 201)
  const refused = await send(gw.proxyUrl + '/a', { user: 'plan-ann' })
  t.equal(refused.status, 429, 'burst is empty')
  t.same(refused.json()['violated-policies'], ['burst'])
  const limits = rateLimitOf(refused.headers).limit
  t.same(limits.map((p) => p.name), ['burst', 'hourly', 'monthly'], 'the refusing policy leads')
  t.equal(limits[0]!.params.t, Number(refused.headers.get('retry-after')), 't of the refusing policy agrees with Retry-After')
  t.equal(limits[1]!.params.r, 3, 'hourly was not charged for the refused request')
  t.equal(limits[2]!.params.r, 49_998, 'monthly neither')

  // Redis holds burst's snapshot now (written off the response path): it refuses at once.
  await waitFor(async () => (await send(gw.proxyUrl + '/a', { user: 'plan-ann' })).headers.get('x-data-source') === 'redis', { what: 'a refusal from the Redis snapshot' })
  const buckets = await peek(gw, 'plan-ann')
  t.equal(buckets.get('burst')!.remaining, 0)
  t.equal(buckets.get('hourly')!.remaining, 3, 'however many refusals, the other buckets paid only for the allowed requests')
  t.equal(buckets.get('monthly')!.remaining, 49_998)
  const monthly = buckets.get('monthly')!.tokens
  t.ok(monthly > 49_998 && monthly < 49_998 + 60 * PLAN.monthly.refillPerSecond, `monthly keeps its fraction exactly (${monthly})`)
})

t.test('a refusal by the hourly quota charges neither burst nor monthly; several refusing: the longest wait', async (t) => {
  const policies = { ...PLAN, burst: { capacity: 10, refillPerSecond: 0.001 }, hourly: { capacity: 2, refillPerSecond: 2 / 3600 } }
  const gw = await startTestGateway(t, {
    config: { policies, routes: [{ path: '/plan', policy: ['burst', 'hourly', 'monthly'] }, { path: '/burst', policy: 'burst' }], control: { adminToken: TOKEN } }
  })
  for (let i = 0; i < 2; i++) t.equal((await send(gw.proxyUrl + '/plan', { user: 'plan-ben' })).status, 201)
  const refused = await send(gw.proxyUrl + '/plan', { user: 'plan-ben' })
  t.equal(refused.status, 429)
  t.same(refused.json()['violated-policies'], ['hourly'])
  const retry = Number(refused.headers.get('retry-after'))
  t.ok(retry >= 1799 && retry <= 1800, `Retry-After: one hourly token at 2/h (${retry} s)`)
  const buckets = await peek(gw, 'plan-ben')
  t.equal(buckets.get('burst')!.remaining, 8, 'burst paid for the two allowed requests only')
  t.equal(buckets.get('monthly')!.remaining, 49_998)

  // Drain burst through its own route: now both refuse, and Retry-After is the longest wait.
  for (let i = 0; i < 8; i++) t.equal((await send(gw.proxyUrl + '/burst', { user: 'plan-ben' })).status, 201)
  const both = await send(gw.proxyUrl + '/plan', { user: 'plan-ben' })
  t.equal(both.status, 429)
  t.same(both.json()['violated-policies'], ['hourly', 'burst'], 'both refusing policies, the longest wait first')
  const waits = rateLimitOf(both.headers).limit.slice(0, 2).map((p) => p.params.t as number)
  t.equal(both.headers.get('retry-after'), String(Math.max(...waits)), 'Retry-After: the longest wait of the refusing policies')
  t.same(waits.map((w) => Math.round(w / 100) * 100), [1800, 1000], 'an hourly token in 1,800 s, a burst token in 1,000 s')
  t.match(both.json().detail, /policies "hourly" .*"burst"/)

  // POST /v1/check with method and path applies the same list.
  const check = await send(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: 'plan-cat', method: 'GET', path: '/plan' }) })
  const body = check.json() as { allowed: boolean, policies: Array<{ policy: string, remaining: number }>, violated_policies: string[] }
  t.equal(body.allowed, true)
  t.same(body.policies.map((p) => [p.policy, p.remaining]), [['hourly', 1], ['burst', 9], ['monthly', 49_999]])
  t.same(body.violated_policies, [])
})

t.test('a tier substitutes each policy of the list; a list may not mix shadow and enforced policies', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      policies: { ...PLAN, burstGold: { capacity: 4, refillPerSecond: 0.001 } },
      defaultPolicy: ['burst', 'monthly'],
      tiers: { callers: { goldie: 'gold' }, sets: { gold: { burst: 'burstGold' } } }
    }
  })
  const res = await send(gw.proxyUrl + '/x', { user: 'goldie' })
  t.same(rateLimitOf(res.headers).policy.map((p) => p.name), ['burstGold', 'monthly'])
  await t.rejects(startTestGateway(t, { config: { policies: { ...PLAN, quiet: { capacity: 5, shadow: true } }, defaultPolicy: ['burst', 'quiet'] } }),
    /defaultPolicy.*mixes shadow and enforced/)
})

t.test('PostgreSQL down: Redis decides the buckets of each request in one atomic call; a refusal charges none', async (t) => {
  const pg = await startPrivatePostgres(t)
  await pg.stop()
  const gw = await startTestGateway(t, {
    databaseUrl: pg.url,
    config: {
      policies: { ...PLAN, burst: { capacity: 10, refillPerSecond: 0.001 }, hourly: { capacity: 3, refillPerSecond: 3 / 3600 } },
      defaultPolicy: ['burst', 'hourly'],
      postgres: { requiredAtStart: false },
      fallback: { probeIntervalMs: 60_000, redisTimeoutMs: 3000 }
    }
  })
  const statuses: number[] = []
  let last = await send(gw.proxyUrl + '/x', { user: 'plan-dan' })
  statuses.push(last.status)
  for (let i = 0; i < 4; i++) { last = await send(gw.proxyUrl + '/x', { user: 'plan-dan' }); statuses.push(last.status) }
  t.same(statuses, [201, 201, 201, 429, 429], 'hourly allows 3')
  t.equal(last.headers.get('x-data-source'), 'redis-fallback')
  const limits = rateLimitOf(last.headers).limit
  t.same(limits.map((p) => [p.name, p.params.r]), [['hourly', 0], ['burst', 7]], 'burst was charged for the three allowed requests only')
  // One by one, each request took two Redis decisions and each refusal a refund besides.
  t.equal(await metricSum(gw.metrics, 'gateway_store_operations_total', { store: 'redis', operation: 'decide' }), 5, 'one Redis decision per request')
  t.equal(await metricSum(gw.metrics, 'gateway_refunds_total', { reason: 'group-refused' }), 0, 'nothing charged, so nothing given back')
})

t.test('concurrent requests of one caller (one batch, one transaction): exactly the hourly quota passes, burst pays only for those', async (t) => {
  const gw = await startTestGateway(t, {
    config: { policies: { ...PLAN, burst: { capacity: 20, refillPerSecond: 0.001 }, hourly: { capacity: 4, refillPerSecond: 4 / 3600 } }, defaultPolicy: ['burst', 'hourly'], control: { adminToken: TOKEN } }
  })
  const users = ['plan-eve', 'plan-fay']
  const replies = await Promise.all(users.flatMap((user) => Array.from({ length: 12 }, async () => ({ user, status: (await send(gw.proxyUrl + '/x', { user })).status }))))
  for (const user of users) {
    const mine = replies.filter((r) => r.user === user)
    t.equal(mine.filter((r) => r.status === 201).length, 4, `${user}: exactly the hourly capacity allowed`)
    const buckets = await peek(gw, user)
    t.equal(buckets.get('burst')!.remaining, 16, `${user}: burst charged for the 4 allowed requests only`)
    t.equal(buckets.get('hourly')!.remaining, 0)
  }
})

t.test('config/examples/plan.yaml answers as docs/policies.md ("A worked plan") says', async (t) => {
  const gw = await startTestGateway(t, { configFile: 'config/examples/plan.yaml' })
  const res = await send(gw.proxyUrl + '/v1/items', { user: 'plan-gus' })
  t.equal(res.status, 201)
  t.equal(res.headers.get('ratelimit-policy'), '"inflight";q=5;qu="concurrent-requests", "burst";q=10;w=5, "hourly";q=1000;w=3600, "monthly";q=50000;w=2592000')
  t.equal(res.headers.get('ratelimit'), '"inflight";r=4, "burst";r=9;t=1, "hourly";r=999;t=4, "monthly";r=49999;t=52')
  const statuses: number[] = []
  for (let i = 0; i < 11; i++) statuses.push((await send(gw.proxyUrl + '/v1/items', { user: 'plan-hal' })).status)
  t.same(statuses, [...Array(10).fill(201), 429], 'eleven in a row: ten pass, burst refuses the eleventh')
  const slow = await Promise.all(Array.from({ length: 6 }, async () => await send(gw.proxyUrl + '/slow/800', { user: 'plan-ivy' })))
  t.same(slow.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 429], 'six slow ones at once: inflight refuses the sixth')
  t.same(slow.find((r) => r.status === 429)!.json()['violated-policies'], ['inflight'])
})
