// Several write-behind policies on one request (a plan's burst and hourly limits) through the
// real gateway, Redis and PostgreSQL: on one Redis server they are decided in one atomic step
// (WB_DECIDE_GROUPS; the requests of one turn of the event loop share a call), all charged or
// none, so a concurrent request of the same caller is never refused for a charge that is given
// back a moment later. A Cluster decides them one by one
// (test/redis-topologies.test.ts); the mixed strict + write-behind case is in write-behind.test.ts.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import t from 'tap'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { metricSum } from './helpers/metrics.ts'
import { TEST_REDIS_URL } from './helpers/stores.ts'

// Slow refills: timing cannot add a token. /both charges A and B together; /a and /b one each;
// /plan charges three buckets.
const POLICIES = 'policies:\n' +
  '  A: { capacity: 10, refillPerSecond: 0.001, consistency: write-behind }\n' +
  '  B: { capacity: 5, refillPerSecond: 0.001, consistency: write-behind }\n' +
  '  burst: { capacity: 4, refillPerSecond: 0.001, consistency: write-behind }\n' +
  '  hourly: { capacity: 100, refillPerSecond: 0.001, consistency: write-behind }\n' +
  '  monthly: { capacity: 1000, refillPerSecond: 0.001, consistency: write-behind }\n' +
  'routes:\n  - { path: /both, policy: [A, B] }\n  - { path: /a, policy: A }\n  - { path: /b, policy: B }\n' +
  '  - { path: /plan, policy: [burst, hourly, monthly] }\n'

const CAPACITY: Record<string, number> = { A: 10, B: 5, burst: 4, hourly: 100, monthly: 1000 }

async function gateway (t: { teardown: (fn: () => unknown) => void }): Promise<{ gw: TestGateway, redis: Redis, sql: postgres.Sql, tokens: (policy: string, user: string) => Promise<number | null> }> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-wb-groups-'))
  const configFile = join(dir, 'policies.yaml')
  writeFileSync(configFile, POLICIES)
  const gw = await startTestGateway(t, { configFile, config: { limits: { syncIntervalMs: 20 } } })
  const redis = new Redis(TEST_REDIS_URL)
  const sql = postgres(gw.databaseUrl, { max: 1, onnotice: () => {} })
  t.teardown(async () => { redis.disconnect(); await sql.end() })
  const tokens = async (policy: string, user: string): Promise<number | null> => {
    const v = await redis.get(`${gw.redisPrefix}wb{${policy}@${CAPACITY[policy]}/0.001:${user}}`)
    return v === null ? null : Number(v.split('|')[0])
  }
  return { gw, redis, sql, tokens }
}

const wbCalls = async (gw: TestGateway): Promise<number> => await metricSum(gw.metrics, 'gateway_store_operations_total', { store: 'redis', operation: 'wb-decide' })
const close = (a: number | null, b: number): boolean => a !== null && Math.abs(a - b) < 0.01

t.test('several write-behind buckets on one request: one atomic Redis call, all charged or none', async (t) => {
  const { gw, sql, tokens } = await gateway(t)

  await t.test('one Redis call per request, whatever the number of buckets; a new caller is new-user', async (t) => {
    const first = await send(gw.proxyUrl + '/plan', { user: 'p' })
    t.equal(first.status, 201)
    t.equal(first.headers.get('x-data-source'), 'new-user', 'no row anywhere: a new caller')
    const before = await wbCalls(gw)
    const statuses = []
    for (let i = 0; i < 5; i++) statuses.push((await send(gw.proxyUrl + '/plan', { user: 'p' })).status)
    t.same(statuses, [201, 201, 201, 429, 429], 'the burst of 4 refuses the fifth request and after')
    t.equal(await wbCalls(gw) - before, 5, 'one Redis call per request (sequential requests), not one per bucket')
    t.same([await tokens('burst', 'p'), await tokens('hourly', 'p'), await tokens('monthly', 'p')].map((x) => Math.round(x ?? -1)), [0, 96, 996],
      'the refused requests charged neither the hourly nor the monthly bucket')
    t.equal(await metricSum(gw.metrics, 'gateway_refunds_total', { reason: 'group-refused' }), 0, 'nothing charged, so nothing to give back')
  })

  await t.test('refused by one bucket: the other is not charged, and the 429 names only the one refusing', async (t) => {
    for (let i = 0; i < 5; i++) t.equal((await send(gw.proxyUrl + '/b', { user: 'r' })).status, 201)
    const refused = await send(gw.proxyUrl + '/both', { user: 'r' })
    t.equal(refused.status, 429)
    t.same(refused.json<{ 'violated-policies': string[] }>()['violated-policies'], ['B'], 'B refused; A could pay')
    t.match(refused.headers.get('ratelimit') ?? '', /"A";r=10;/, 'A reported as it stands: full, uncharged')
    t.ok(close(await tokens('A', 'r'), 10), `A holds all 10 in Redis (${await tokens('A', 'r')})`)
  })

  await t.test('a refusal writes nothing behind for the buckets it left as they were', async (t) => {
    const rowOf = async (policy: string): Promise<string | null> =>
      ((await sql<Array<{ at: string }>>`SELECT last_refill_time::text AS at FROM rate_limits WHERE policy = ${policy} AND user_id = 'u'`)[0]?.at) ?? null
    t.equal((await send(gw.proxyUrl + '/a', { user: 'u' })).status, 201)
    for (let i = 0; i < 5; i++) t.equal((await send(gw.proxyUrl + '/b', { user: 'u' })).status, 201)
    await waitFor(async () => (await rowOf('A')) !== null && (await rowOf('B')) !== null, { what: 'A and B written behind' })
    const before = await rowOf('A')
    t.equal((await send(gw.proxyUrl + '/both', { user: 'u' })).status, 429, 'B refuses; A is held in Redis and left as it was')
    // A later flush (another caller's) has gone by: whatever the refusal recorded would be in it.
    await send(gw.proxyUrl + '/b', { user: 'flush-marker' })
    await waitFor(async () => (await sql`SELECT 1 FROM rate_limits WHERE policy = 'B' AND user_id = 'flush-marker'`).length === 1, { what: 'a later flush' })
    t.equal(await rowOf('A'), before, 'A\'s row not rewritten by the refusal')
  })

  await t.test('concurrent requests of one caller, some charging A and B, some only A: exactly A\'s capacity allowed, no false refusal', async (t) => {
    // The /both requests go first: decided one bucket at a time, they would charge A, be refused
    // by B and give A back, and the /a requests meanwhile would be refused for those tokens.
    const paths = [...Array(15).fill('/both'), ...Array(20).fill('/a')] as string[]
    const replies = await Promise.all(paths.map(async (p) => ({ path: p, status: (await send(gw.proxyUrl + p, { user: 'c' })).status })))
    const allowed = (p: string): number => replies.filter((r) => r.path === p && r.status === 201).length
    t.equal(replies.filter((r) => r.status !== 201 && r.status !== 429).length, 0, 'every answer allowed or refused')
    t.ok(allowed('/both') <= 5, `at most B's 5 allowed on /both (${allowed('/both')})`)
    t.equal(allowed('/both') + allowed('/a'), 10, `A's 10 tokens all spent on allowed requests (${allowed('/both')} + ${allowed('/a')})`)
    t.ok(close(await tokens('A', 'c'), 0), 'A empty')
    t.ok(close(await tokens('B', 'c'), 5 - allowed('/both')), 'B charged for the allowed /both requests only')
    t.equal(await metricSum(gw.metrics, 'gateway_refunds_total', { reason: 'group-refused' }), 0, 'no charge given back: none was made')
  })

  await t.test('a known caller Redis does not hold starts from its rows; a bucket Redis holds keeps its state', async (t) => {
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('A', 'k', 2, clock_timestamp()), ('B', 'k', 3, clock_timestamp())`
    const first = await send(gw.proxyUrl + '/both', { user: 'k' })
    t.equal(first.status, 201)
    t.equal(first.headers.get('x-data-source'), 'postgres', 'loaded from PostgreSQL')
    t.same([await tokens('A', 'k'), await tokens('B', 'k')].map((x) => Math.round((x ?? -1) * 100) / 100), [1, 2], 'seeded from the rows, then charged')
    t.equal((await send(gw.proxyUrl + '/both', { user: 'k' })).status, 201)
    t.equal((await send(gw.proxyUrl + '/both', { user: 'k' })).status, 429, 'A\'s row had 2: the third is refused')

    t.equal((await send(gw.proxyUrl + '/a', { user: 'm' })).status, 201, 'A now held in Redis (9 left), B not')
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('A', 'm', 5, clock_timestamp()), ('B', 'm', 1, clock_timestamp())
      ON CONFLICT (policy, user_id) DO UPDATE SET tokens = excluded.tokens`
    t.equal((await send(gw.proxyUrl + '/both', { user: 'm' })).status, 201)
    t.same([await tokens('A', 'm'), await tokens('B', 'm')].map((x) => Math.round((x ?? -1) * 100) / 100), [8, 0], 'A from Redis\'s 9, B from its row\'s 1')
    t.equal((await send(gw.proxyUrl + '/both', { user: 'm' })).status, 429, 'B spent')
  })
})
