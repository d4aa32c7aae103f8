// Write-behind mode through the real gateway, real Redis and PostgreSQL (the shared servers,
// a database and key prefix of its own): sources, one Redis round trip per request, a miss
// loads PostgreSQL's row and seeds only if absent, written behind in one statement per flush,
// the per-policy override, and the shutdown flush. The faults (private servers) are in
// test/write-behind-faults.test.ts; the pure logic in test/write-behind-units.test.ts.
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

async function counter (gw: TestGateway, name: string, labels: Record<string, string>): Promise<number> {
  return await metricSum(gw.metrics, name, labels)
}

function stores (t: { teardown: (fn: () => unknown) => void }, gw: TestGateway): { redis: Redis, sql: postgres.Sql } {
  const redis = new Redis(TEST_REDIS_URL)
  const sql = postgres(gw.databaseUrl, { max: 1, onnotice: () => {} })
  t.teardown(async () => { redis.disconnect(); await sql.end() })
  return { redis, sql }
}

async function row (sql: postgres.Sql, policy: string, user: string): Promise<{ tokens: number } | undefined> {
  const rows = await sql<Array<{ tokens: number }>>`SELECT tokens FROM rate_limits WHERE policy = ${policy} AND user_id = ${user}`
  return rows[0] === undefined ? undefined : { tokens: Number(rows[0].tokens) }
}

t.test('write-behind: Redis decides every request, PostgreSQL is written behind', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { consistency: 'write-behind', syncIntervalMs: 50, refillPerSecond: 0.01 } } }) // a slow refill: timing cannot add tokens
  const { redis, sql } = stores(t, gw)

  await t.test('a new caller: new-user, then redis; exactly the capacity allowed', async (t) => {
    const replies = []
    for (let i = 0; i < 12; i++) replies.push(await send(gw.proxyUrl + '/x', { user: 'nu' }))
    t.same(replies.map((r) => r.status), [...Array(10).fill(201), 429, 429], '10 allowed, then refused')
    t.same(replies.map((r) => r.headers.get('x-data-source')), ['new-user', ...Array(11).fill('redis')])
    const value = await redis.get(`${gw.redisPrefix}wb{default@10/0.01:nu}`)
    t.match(value, /\|w$/, 'the write-behind key, on the bucket\'s hash tag')
    t.equal(await redis.get(`${gw.redisPrefix}{default@10/0.01:nu}`), null, 'no snapshot-cache value: the modes keep apart')
    const written = await waitFor(async () => { const r = await row(sql, 'default', 'nu'); return r !== undefined && r.tokens < 1 ? r : null }, { what: 'the row written behind' }) as { tokens: number }
    t.ok(written.tokens < 1 && written.tokens > -1e-6, `PostgreSQL holds the spent bucket (${written.tokens})`)
  })

  await t.test('one Redis round trip per request on a bucket Redis holds; no PostgreSQL on the request path', async (t) => {
    await send(gw.proxyUrl + '/x', { user: 'rt' })
    const before = {
      wb: await counter(gw, 'gateway_store_operations_total', { store: 'redis', operation: 'wb-decide' }),
      redis: await counter(gw, 'gateway_store_operations_total', { store: 'redis' }),
      pgDecide: await counter(gw, 'gateway_store_operations_total', { store: 'postgres', operation: 'decide' }),
      pgLoad: await counter(gw, 'gateway_store_operations_total', { store: 'postgres', operation: 'wb-load' })
    }
    for (let i = 0; i < 20; i++) await send(gw.proxyUrl + '/x', { user: 'rt' })
    t.equal(await counter(gw, 'gateway_store_operations_total', { store: 'redis', operation: 'wb-decide' }) - before.wb, 20, 'one WB_DECIDE per request')
    t.equal(await counter(gw, 'gateway_store_operations_total', { store: 'redis' }) - before.redis, 20, 'and no other Redis command')
    t.equal(await counter(gw, 'gateway_store_operations_total', { store: 'postgres', operation: 'decide' }) - before.pgDecide, 0, 'PostgreSQL decided nothing')
    t.equal(await counter(gw, 'gateway_store_operations_total', { store: 'postgres', operation: 'wb-load' }) - before.pgLoad, 0, 'nor was it read')
    t.equal(await counter(gw, 'gateway_decisions_total', { source: 'redis', decided_by: 'redis', result: 'blocked' }) > 0, true, 'counted as Redis decisions')
  })

  await t.test('a miss loads the truth: a known caller starts from its row (postgres), not full', async (t) => {
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('default', 'known', 2, clock_timestamp())`
    const replies = [await send(gw.proxyUrl + '/x', { user: 'known' }), await send(gw.proxyUrl + '/x', { user: 'known' }), await send(gw.proxyUrl + '/x', { user: 'known' })]
    t.same(replies.map((r) => r.status), [201, 201, 429], 'the row\'s two tokens, then refused')
    t.same(replies.map((r) => r.headers.get('x-data-source')), ['postgres', 'redis', 'redis'])
  })

  await t.test('concurrent misses of one bucket load once each and seed once: exactly the row\'s tokens', async (t) => {
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('default', 'crowd', 3, clock_timestamp())`
    const replies = await Promise.all(Array.from({ length: 20 }, async () => await send(gw.proxyUrl + '/x', { user: 'crowd' })))
    t.equal(replies.filter((r) => r.status === 201).length, 3, 'three allowed')
    t.equal(replies.filter((r) => r.headers.get('x-data-source') === 'postgres').length, 1, 'one seeded from PostgreSQL; the rest found it seeded')
  })

  await t.test('seeded only if absent: a state Redis holds is kept, PostgreSQL\'s row is not read', async (t) => {
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('default', 'held', 10, clock_timestamp())`
    const [sec, micro] = await redis.time()
    await redis.set(`${gw.redisPrefix}wb{default@10/0.01:held}`, `1|${Number(sec) * 1000 + Number(micro) / 1000}|w`, 'EX', 10)
    const replies = [await send(gw.proxyUrl + '/x', { user: 'held' }), await send(gw.proxyUrl + '/x', { user: 'held' })]
    t.same(replies.map((r) => [r.status, r.headers.get('x-data-source')]), [[201, 'redis'], [429, 'redis']], 'Redis\'s one token')
  })

  await t.test('flushes: one statement per flush, many keys in it; the oldest unsynced age goes back to 0', async (t) => {
    // Statements that succeeded against flushes that succeeded: on a busy machine a flush (or
    // the ping before its retry) can miss its deadline, which adds a failed flush with or
    // without a statement, never a succeeded one.
    const counts = async (): Promise<{ okFlushes: number, okStatements: number }> => ({
      okFlushes: await counter(gw, 'gateway_write_behind_flushes_total', { result: 'ok' }),
      okStatements: await counter(gw, 'gateway_store_operations_total', { store: 'postgres', operation: 'wb-sync' }) -
        await counter(gw, 'gateway_store_errors_total', { store: 'postgres', operation: 'wb-sync' })
    })
    // The earlier subtests' last flush may be between its statement and its commit: start
    // from a settled moment, or that flush's statement falls before and its commit after.
    let before = await counts()
    await waitFor(async () => { before = await counts(); return before.okStatements === before.okFlushes }, { what: 'no flush in flight' })
    await Promise.all(Array.from({ length: 30 }, async (_, i) => await send(gw.proxyUrl + '/x', { user: `many-${i}` })))
    await waitFor(async () => {
      const rows = await sql`SELECT count(*)::int AS n FROM rate_limits WHERE user_id LIKE 'many-%'`
      return rows[0]!.n === 30
    }, { what: 'the 30 rows written' })
    await waitFor(async () => (await counter(gw, 'gateway_write_behind_oldest_unsynced_seconds', {})) === 0, { what: 'age 0 once written' })
    t.pass('the oldest unsynced age is 0 once everything is written')
    // A statement is counted when sent, its flush when it has committed: the rows (and age 0)
    // are seen in between. Settled, the two counts are equal; a flush sending two statements
    // would never let them be.
    let last = before
    try {
      await waitFor(async () => { last = await counts(); return last.okStatements - before.okStatements === last.okFlushes - before.okFlushes }, { what: 'one statement per flush' })
    } catch (err) {
      throw new Error(`${(err as Error).message}: before ${JSON.stringify(before)}, last ${JSON.stringify(last)}`)
    }
    t.pass('one statement per flush')
    const flushes = last.okFlushes - before.okFlushes
    t.ok(flushes > 0 && flushes < 30, `30 buckets in ${flushes} flushes`)
  })
})

t.test('write-behind keys outlive a full refill (limits.writeBehindKeyTtlSeconds): a caller back later skips PostgreSQL', async (t) => {
  // capacity 2 at 10/s: full again in 0.2 s, so a key living only until full would be gone
  // long before the next request of a caller who comes back every few seconds.
  const gw = await startTestGateway(t, { config: { limits: { consistency: 'write-behind', capacity: 2, refillPerSecond: 10, writeBehindKeyTtlSeconds: 120 } } })
  const { redis } = stores(t, gw)
  t.equal((await send(gw.proxyUrl + '/x', { user: 'back' })).headers.get('x-data-source'), 'new-user')
  const key = `${gw.redisPrefix}wb{default@2/10:back}`
  const ttl = await redis.ttl(key)
  t.ok(ttl > 100 && ttl <= 120, `the key lives the configured 120 s, not the 1 s of a full refill (TTL ${ttl})`)
  await redis.expire(key, 5) // as if the caller's last request were long ago: the key is still there
  const back = await send(gw.proxyUrl + '/x', { user: 'back' })
  t.equal(back.headers.get('x-data-source'), 'redis', 'Redis decides the returning caller alone')
  t.ok(await redis.ttl(key) > 100, 'and the key\'s life starts again')
})

t.test('write-behind keys live at least until full, whatever the setting', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { consistency: 'write-behind', capacity: 100, refillPerSecond: 0.01, writeBehindKeyTtlSeconds: 60 } } })
  const { redis } = stores(t, gw)
  await send(gw.proxyUrl + '/x', { user: 'slow' })
  const ttl = await redis.ttl(`${gw.redisPrefix}wb{default@100/0.01:slow}`)
  t.ok(ttl > 9000, `a bucket full again only in 10,000 s keeps its key that long (TTL ${ttl})`)
})

t.test('one request charges a write-behind burst and a strict daily quota, all or nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-wb-mixed-'))
  const configFile = join(dir, 'policies.yaml')
  // Slow refills: timing cannot add a token. /a runs out of burst first, /b out of daily first;
  // /status refunds its write-behind bucket when the upstream answers 5xx.
  writeFileSync(configFile, 'policies:\n' +
    '  burstA: { capacity: 2, refillPerSecond: 0.001, consistency: write-behind }\n  dailyA: { capacity: 5, refillPerSecond: 0.001 }\n' +
    '  burstB: { capacity: 5, refillPerSecond: 0.001, consistency: write-behind }\n  dailyB: { capacity: 2, refillPerSecond: 0.001 }\n' +
    '  burstR: { capacity: 3, refillPerSecond: 0.001, consistency: write-behind, refund: [5xx] }\n  dailyR: { capacity: 100, refillPerSecond: 0.001 }\n' +
    'routes:\n  - { path: /a, policy: [burstA, dailyA] }\n  - { path: /b, policy: [burstB, dailyB] }\n  - { path: /status, policy: [burstR, dailyR] }\n')
  const gw = await startTestGateway(t, { configFile, config: { limits: { syncIntervalMs: 20 } } })
  const { redis, sql } = stores(t, gw)
  const wbTokens = async (policy: string, user: string): Promise<number> => Number((await redis.get(`${gw.redisPrefix}wb{${policy}:${user}}`))?.split('|')[0])

  await t.test('the burst refuses: the daily quota in PostgreSQL is not charged', async (t) => {
    const statuses = []
    for (let i = 0; i < 4; i++) statuses.push((await send(gw.proxyUrl + '/a', { user: 'mx' })).status)
    t.same(statuses, [201, 201, 429, 429], 'two allowed: the burst\'s capacity')
    const daily = await row(sql, 'dailyA', 'mx')
    t.ok(daily !== undefined && Math.abs(daily.tokens - 3) < 0.01, `dailyA charged only for the two allowed requests (${daily?.tokens} of 5 left)`)
    t.ok(await wbTokens('burstA@2/0.001', 'mx') < 0.01, 'burstA spent in Redis')
  })

  await t.test('the daily quota refuses: the burst charged in Redis is given back', async (t) => {
    const replies = []
    for (let i = 0; i < 4; i++) replies.push(await send(gw.proxyUrl + '/b', { user: 'mx' }))
    t.same(replies.map((r) => r.status), [201, 201, 429, 429], 'two allowed: the daily quota\'s capacity')
    const burst = await wbTokens('burstB@5/0.001', 'mx')
    t.ok(Math.abs(burst - 3) < 0.01, `burstB holds 5 - 2 = 3: the refused requests' charges were given back (${burst})`)
    t.equal(await counter(gw, 'gateway_refunds_total', { policy: 'burstB', reason: 'group-refused', result: 'refunded' }), 2, 'counted as refunds')
    // A flush never raises a row: a charge written before its refund stays in PostgreSQL's copy,
    // which is then lower than Redis's (errs towards fewer tokens if Redis loses the bucket).
    // Wait for the flush that carries the latest state (an earlier one may land first, at 4).
    const written = await waitFor(async () => { const r = await row(sql, 'burstB', 'mx'); return r !== undefined && r.tokens < burst + 0.01 ? r : null }, { what: 'burstB written behind up to date' }) as { tokens: number }
    t.ok(written.tokens > 1.99 && written.tokens < burst + 0.01, `written behind between 2 and Redis's 3, never above it (${written.tokens})`)
    const refused = replies[2]!.headers.get('ratelimit-policy') ?? ''
    t.match(refused, /burstB/, 'both policies are reported')
  })

  await t.test('a write-behind bucket gets its cost back when the upstream fails and the policy refunds 5xx', async (t) => {
    t.equal((await send(gw.proxyUrl + '/status/503', { user: 'mx' })).status, 503)
    await waitFor(async () => (await counter(gw, 'gateway_refunds_total', { policy: 'burstR', reason: '5xx', result: 'refunded' })) === 1, { what: 'the refund counted' })
    t.ok(Math.abs(await wbTokens('burstR@3/0.001', 'mx') - 3) < 0.01, 'burstR full again in Redis')
    t.equal(await counter(gw, 'gateway_refunds_total', { policy: 'burstR', result: 'failed' }), 0, 'no failed refund')
  })
})

t.test('a policy sets its own consistency: a strict daily quota beside a write-behind burst', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-wb-'))
  const configFile = join(dir, 'policies.yaml')
  writeFileSync(configFile, 'policies:\n  burst: { capacity: 5, refillPerSecond: 1, consistency: write-behind }\n  daily: { capacity: 5, refillPerSecond: 0.001 }\n' +
    'routes:\n  - { path: /burst, policy: burst }\n  - { path: /daily, policy: daily }\n')
  const gw = await startTestGateway(t, { configFile, config: { limits: { syncIntervalMs: 60_000 }, control: { adminToken: 'write-behind-admin-token' } } })
  t.equal(gw.config.limits.consistency, 'strict', 'strict by default')
  const { redis, sql } = stores(t, gw)
  for (let i = 0; i < 3; i++) {
    t.equal((await send(gw.proxyUrl + '/burst', { user: 'mixed' })).status, 201)
    t.equal((await send(gw.proxyUrl + '/daily', { user: 'mixed' })).status, 201)
  }
  t.match(await redis.get(`${gw.redisPrefix}wb{burst@5/1:mixed}`), /\|w$/, 'burst: decided in Redis')
  t.equal(await redis.get(`${gw.redisPrefix}wb{daily@5/0.001:mixed}`), null, 'daily: not')
  const daily = await row(sql, 'daily', 'mixed')
  t.ok(daily !== undefined && Math.abs(daily.tokens - 2) < 0.01, 'daily: PostgreSQL decided each request (strict)')
  t.equal(await row(sql, 'burst', 'mixed'), undefined, 'burst: not written yet (the sync interval is a minute)')
  t.equal(await counter(gw, 'gateway_decisions_total', { policy: 'daily', decided_by: 'postgres' }), 3)
  t.equal(await counter(gw, 'gateway_decisions_total', { policy: 'burst', decided_by: 'redis' }), 3)
  const described = JSON.parse((await send(gw.controlUrl + '/v1/policies', { headers: { authorization: 'Bearer write-behind-admin-token' } })).body) as { policies: Array<{ name: string, consistency?: string }> }
  t.same(Object.fromEntries(described.policies.map((p) => [p.name, p.consistency])), { default: 'strict', burst: 'write-behind', daily: 'strict' }, 'GET /v1/policies says who decides each policy')
  // An admin reset forgets the Redis state and the pending one too: the caller starts full.
  for (let i = 0; i < 5; i++) await send(gw.proxyUrl + '/burst', { user: 'reset-me' })
  t.equal((await send(gw.proxyUrl + '/burst', { user: 'reset-me' })).status, 429, 'spent')
  const reset = await send(gw.controlUrl + '/v1/buckets/reset-me?policy=burst', { method: 'DELETE', headers: { authorization: 'Bearer write-behind-admin-token' } })
  t.equal(reset.status, 200, reset.body)
  const after = await send(gw.proxyUrl + '/burst', { user: 'reset-me' })
  t.same([after.status, after.headers.get('x-data-source')], [201, 'new-user'], 'full again, from no row')
  // A graceful shutdown writes the pending state once.
  await gw.close()
  const burst = await row(sql, 'burst', 'mixed')
  t.ok(burst !== undefined && burst.tokens < 3 && burst.tokens > 1.9, `the shutdown flushed burst: 5 - 3 plus the refill meanwhile (${burst?.tokens})`)
})
