// Group commit changes no outcome: the core exactness checks with batching forced by a long
// window (20 ms), so concurrent decisions, several for one key among them, share a round trip.
import { Redis } from 'ioredis'
import postgres from 'postgres'
import t from 'tap'
import { SCENARIOS } from '../scripts/scenarios-lib.ts'
import { defineScripts } from '../src/stores/redis/scripts.ts'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { burst, send, waitFor } from './helpers/http.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'

const forced = { postgres: { batchWindowMs: 20 } }

/** Decisions and round trips PostgreSQL has seen so far (the batch-size histogram). */
async function batches (gw: TestGateway): Promise<{ decisions: number, roundTrips: number }> {
  const { values } = await gw.metrics.postgresBatchSize.get()
  return {
    decisions: values.find((v) => v.metricName === 'gateway_postgres_batch_size_sum')?.value ?? 0,
    roundTrips: values.find((v) => v.metricName === 'gateway_postgres_batch_size_count')?.value ?? 0
  }
}

const allowed = (statuses: number[]): number => statuses.filter((s) => s === 201).length

t.test('40 concurrent requests on one fresh key: exactly 10 allowed, the key several times per batch', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  // A first burst opens the client's 40 connections and the gateway's upstream ones: on a cold
  // gateway and a busy machine, setting them up spreads the burst beyond one batch window.
  await burst(gw.proxyUrl + '/x', 'warm-up', 40)
  for (const user of ['one-a', 'one-b']) {
    const before = await batches(gw)
    const statuses = (await burst(gw.proxyUrl + '/x', user, 40)).map((r) => r.status)
    t.equal(allowed(statuses), 10, `${user}: 10 allowed`)
    t.equal(statuses.filter((s) => s === 429).length, 30, `${user}: 30 refused`)
    const after = await batches(gw)
    const decisions = after.decisions - before.decisions
    const roundTrips = after.roundTrips - before.roundTrips
    t.ok(decisions >= 10 && roundTrips < decisions / 2, `${user}: ${decisions} PostgreSQL decisions shared ${roundTrips} round trips`)
  }
})

t.test('several requests for one key inside one batch are charged in arrival order', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  const before = await batches(gw)
  const res = await fetch(gw.controlUrl + '/v1/check', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ checks: [{ key: 'mixed', cost: 6 }, { key: 'other', cost: 9 }, { key: 'mixed', cost: 6 }, { key: 'mixed', cost: 3 }, { key: 'mixed', cost: 1 }, { key: 'mixed', cost: 1 }] })
  })
  const { results } = await res.json() as { results: Array<{ allowed: boolean, remaining: number }> }
  const after = await batches(gw)
  t.equal(after.roundTrips - before.roundTrips, 1, 'all six decisions went to PostgreSQL in one round trip')
  t.same(results.map((r) => r.allowed), [true, true, false, true, true, false], '6 of 10, not 6 more, 3, 1, then nothing left')
  t.same(results.map((r) => r.remaining), [4, 1, 4, 1, 0, 0])
})

t.test('two gateways sharing the stores, both batching: 40 concurrent requests, exactly 10 allowed in total', async (t) => {
  const a = await startTestGateway(t, { config: forced })
  const b = await startTestGateway(t, { config: forced, databaseUrl: a.databaseUrl, redisPrefix: a.redisPrefix, upstreamUrl: a.upstream!.url })
  const replies = await Promise.all([burst(a.proxyUrl + '/s', 'shared', 20), burst(b.proxyUrl + '/s', 'shared', 20)])
  t.equal(allowed(replies.flat().map((r) => r.status)), 10)
})

t.test('the six original scenarios give their expected results with batching forced', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  const runs = await Promise.all(SCENARIOS.map(async ([id, scenario]) => [id, await scenario(gw.proxyUrl + '/', `batched-${id}`)] as const))
  for (const [id, result] of runs) {
    for (const e of result.expectations) t.ok(e.ok, `${id}: ${e.what} (expected ${e.expected}, got ${e.actual})`)
  }
})

t.test('Redis: the reads and the write-backs of concurrent decisions each share one round trip', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 4, refillPerSecond: 2 } } })
  const round = async (): Promise<Record<string, number>> => {
    const { values } = await gw.metrics.storeOperations.get()
    return Object.fromEntries(values.filter((v) => v.labels.store === 'redis').map((v) => [v.labels.operation, v.value]))
  }
  const keys = Array.from({ length: 20 }, (_, i) => `co-${i}`)
  const check = async (): Promise<boolean[]> => {
    const res = await fetch(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ checks: keys.map((key) => ({ key })) }) })
    return ((await res.json()) as { results: Array<{ allowed: boolean }> }).results.map((r) => r.allowed)
  }
  const before = await round()
  t.same(await check(), keys.map(() => true))
  const redis = new Redis(gw.config.redis.url)
  t.teardown(() => redis.disconnect())
  const cacheKeys = keys.map((k) => gw.redis.key(gw.runtime.current.policies.defaultPolicy.cacheName, k))
  // Write-backs are off the response path: wait for them to land.
  const values = (await waitFor(async () => { const v = await redis.mget(cacheKeys); return v.every((x) => x !== null) ? v : null }, { what: 'write-backs' }))!
  const after = await round()
  t.equal((after.get ?? 0) - (before.get ?? 0), 1, '20 reads, one MGET')
  t.equal((after.set ?? 0) - (before.set ?? 0), 1, '20 write-backs, one script call')
  for (const v of values) t.match(v, /^3(\.\d+)?\|\d+(\.\d+)?$/, 'snapshot: 3 tokens left, database time')
  for (const ttl of await Promise.all(cacheKeys.map((k) => redis.ttl(k)))) t.ok(ttl > 0 && ttl <= 2, `TTL ${ttl} s: the time to refill (4 tokens at 2/s)`)
  t.same(await check(), keys.map(() => true), 'the snapshots read back as hits with tokens: Postgres decides again')
})

t.test('knobs: synchronousCommit false turns the sessions\' synchronous_commit off, batchMaxInFlight 1 still exact', async (t) => {
  const gw = await startTestGateway(t, { config: { postgres: { synchronousCommit: false, batchMaxInFlight: 1 } } })
  const [row] = await gw.postgres.sql<Array<{ synchronous_commit: string }>>`SHOW synchronous_commit`
  t.equal(row!.synchronous_commit, 'off')
  const statuses = (await burst(gw.proxyUrl + '/k', 'knobs', 25)).map((r) => r.status)
  t.equal(allowed(statuses), 10)
  const def = await startTestGateway(t)
  const [on] = await def.postgres.sql<Array<{ synchronous_commit: string }>>`SHOW synchronous_commit`
  t.equal(on!.synchronous_commit, 'on', 'durable by default')
})

t.test('WRITE_MANY applies, key by key and in order, exactly what WRITE applies alone', async (t) => {
  const prefix = createRedisPrefix(t)
  const redis = defineScripts(new Redis(TEST_REDIS_URL))
  t.teardown(() => redis.disconnect())
  // Each case: the value already stored (null: none), then the write-back (snapshot, charge).
  const cases: Array<[string | null, string, number]> = [
    [null, '5|2000', 1], // nothing cached: written
    ['5|2000', '7|1000', 1], // an older snapshot landing late: dropped
    ['6|2000', '4|2000', 1], // same instant, fewer tokens: newer, written
    ['4|2000', '6|2000', 0], // same instant, more tokens: dropped
    ['4|5000|r', '9|9000', 1], // Redis owns it: charged, not overwritten
    ['4|5000|m', '9|9000', 2], // being handed back: charged
    ['4|5000|r', '9|9000', 0] // a denial charges nothing
  ]
  const one = (i: number): string => `${prefix}{default:one-${i}}`
  const many = (i: number): string => `${prefix}{default:many-${i}}`
  for (const [i, [before]] of cases.entries()) {
    if (before !== null) { await redis.set(one(i), before, 'EX', 60); await redis.set(many(i), before, 'EX', 60) }
  }
  let writtenAlone = 0
  for (const [i, [, snapshot, charge]] of cases.entries()) writtenAlone += await redis.rlWrite(one(i), snapshot, 30, charge)
  const args = [...cases.map((_, i) => many(i)), ...cases.flatMap(([, snapshot, charge]) => [snapshot, 30, charge])]
  t.equal(await redis.rlWriteMany(cases.length, ...args), writtenAlone, 'as many written')
  for (const i of cases.keys()) t.equal(await redis.get(many(i)), await redis.get(one(i)), `case ${i}: same value`)
  // Two write-backs for one key in one call: the later wins, as if sent one after the other.
  t.equal(await redis.rlWriteMany(2, many(0), many(0), '3|4000', 30, 1, '2|4001', 30, 1), 2)
  t.equal(await redis.get(many(0)), '2|4001')
})

t.test('decisions one after another stay on one PostgreSQL connection; a burst spreads over the batch slots', async (t) => {
  const gw = await startTestGateway(t)
  const sql = postgres(gw.databaseUrl, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await sql.end() })
  // The backends whose last statement was a decision (pg_stat_activity keeps each one's last).
  const deciding = async (): Promise<number> => (await sql`SELECT count(*)::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%rate_limit_decide%'`)[0]!.n
  for (let i = 0; i < 20; i++) t.equal((await send(gw.proxyUrl + '/x', { user: `one-by-one-${i}` })).status, 201)
  t.equal(await deciding(), 1, 'twenty sequential decisions, one connection (not the pool in turn)')
  await Promise.all(Array.from({ length: 4 }, async (_, round) => await burst(gw.proxyUrl + '/x', `burst-${round}`, 40)))
  t.ok(await deciding() > 1, 'concurrent batches take the other slots')
})
