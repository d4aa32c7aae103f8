// Write-behind mode without servers: the merge, the pending-state bookkeeping and the flusher
// with a controlled clock, and the decision flow through a Limiter on the in-memory twins
// (src/stores/memory). The real stores are in test/write-behind.test.ts.
import t from 'tap'
import type { Policy } from '../src/core/domain.ts'
import type { BucketLedger, SyncEntry } from '../src/core/ports.ts'
import { tokensAt } from '../src/core/token-bucket.ts'
import { mergeLower } from '../src/core/write-behind-merge.ts'
import { PendingSyncs, WriteBehindSync } from '../src/limiter/write-behind.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { parseValue } from '../src/stores/memory/index.ts'
import { writeBehindTwins } from './helpers/twins.ts'

const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1, cacheName: 'default@10/1', consistency: 'write-behind' }
const log = createLogger('silent')

t.test('mergeLower: the lower count at the later time; a flush never raises a bucket', async (t) => {
  t.same(mergeLower(null, { tokens: 4, atMs: 1000 }, policy), { tokens: 4, atMs: 1000 }, 'no row: the state')
  // Row: 2 tokens at t=0 (5 by t=3000); state: 4 tokens at 3000. Lower at 3000: 4.
  t.same(mergeLower({ tokens: 2, atMs: 0 }, { tokens: 4, atMs: 3000 }, policy), { tokens: 4, atMs: 3000 })
  // A state older than the row (3 tokens at 0 -> 5 at 2000) against the row's 1 at 2000: 1 stays.
  t.same(mergeLower({ tokens: 1, atMs: 2000 }, { tokens: 3, atMs: 0 }, policy), { tokens: 1, atMs: 2000 }, 'an old state cannot undo spending')
  // Property: the result never projects more than the row, at any later time.
  for (let i = 0; i < 500; i++) {
    const row = { tokens: Math.random() * 10, atMs: Math.random() * 5000 }
    const state = { tokens: Math.random() * 10 - 1, atMs: Math.random() * 5000 }
    const m = mergeLower(row, state, policy)
    const at = Math.max(row.atMs, state.atMs) + Math.random() * 3000
    t.ok(tokensAt(m, policy, at) <= tokensAt(row, policy, at) + 1e-9, 'never above the row') || t.fail(JSON.stringify({ row, state, m }))
    if (tokensAt(m, policy, at) > tokensAt(row, policy, at) + 1e-9) break
  }
})

t.test('PendingSyncs: latest state per bucket, older dropped, ages from the clock, a failed batch restored', async (t) => {
  const p = new PendingSyncs()
  const other: Policy = { ...policy, name: 'other' }
  p.record(policy, 'b', 9, 100, 1_000)
  p.record(policy, 'a', 5, 100, 1_010)
  p.record(policy, 'a', 4, 101, 1_020)
  p.record(policy, 'a', 7, 99, 1_030) // older Redis time: dropped
  p.record(policy, 'a', 4.5, 101, 1_030) // same time, more tokens: older, dropped
  p.record(other, 'a', 1, 50, 1_040)
  t.equal(p.size, 3, 'one entry per bucket')
  t.equal(p.oldestAgeMs(1_100), 100, 'oldest change: the first record')
  const batch = p.take(1_100)!
  t.same(batch.sync.map((e) => [e.policy.name, e.userId, e.tokens, e.ageMs]), [['default', 'a', 4, 80], ['default', 'b', 9, 100], ['other', 'a', 1, 60]],
    'key order, the latest state, aged from when it was learnt')
  t.equal(p.size, 0)
  t.equal(p.oldestAgeMs(1_200), 200, 'in flight still counts as unsynced')
  p.record(policy, 'a', 2, 102, 1_150) // newer than the batch's
  p.restore(batch)
  t.equal(p.size, 3, 'the failed batch is back')
  const again = p.take(1_300)!
  t.same(again.sync.map((e) => [e.userId, e.tokens]), [['a', 2], ['b', 9], ['a', 1]], 'the newer state of a replaced the failed one')
  t.equal(p.oldestAgeMs(1_300), 300, 'the restored entries keep their age')
  p.done()
  t.equal(p.oldestAgeMs(1_300), 0, 'written: nothing unsynced')
  t.equal(p.take(1_400), null, 'nothing pending')
})

t.test('WriteBehindSync: one statement per flush; failures keep the entries and are retried; metrics', async (t) => {
  let now = 0
  const calls: SyncEntry[][] = []
  let failing = true
  const ledger: BucketLedger = {
    load: async () => null,
    sync: async (entries) => { calls.push([...entries]); if (failing) throw new Error('PostgreSQL down') },
    ping: async () => { if (failing) throw new Error('PostgreSQL down') }
  }
  const metrics = new Metrics()
  const sync = new WriteBehindSync({ ledger, intervalMs: () => 100, metrics, log, now: () => now })
  sync.record(policy, 'a', 5, 10)
  sync.record(policy, 'b', 6, 10)
  now = 50
  t.equal(await sync.flush(), false, 'a failed flush says so')
  t.equal(calls.length, 1, 'one statement')
  t.equal(calls[0]!.length, 2, 'both buckets in it')
  t.equal(sync.pending.size, 2, 'kept')
  sync.record(policy, 'a', 3, 11)
  t.equal(await sync.flush(), false, 'still failing')
  t.equal(calls.length, 1, 'after a failure, no statement until PostgreSQL answers a ping (it would run late, with stale ages)')
  now = 400
  const age = await metrics.registry.getSingleMetric('gateway_write_behind_oldest_unsynced_seconds')!.get()
  t.equal(age.values[0]!.value, 0.05, 'the gauge showed the oldest change\'s age at the last flush')
  failing = false
  t.equal(await sync.flush(), true)
  t.same(calls[1]!.map((e) => [e.userId, e.tokens, e.ageMs]), [['a', 3, 350], ['b', 6, 400]], 'retried with the newer state of a (aged from when it was learnt)')
  t.equal(sync.pending.size, 0)
  const flushes = await metrics.registry.getSingleMetric('gateway_write_behind_flushes_total')!.get()
  t.same(Object.fromEntries(flushes.values.map((v) => [v.labels.result, v.value])), { ok: 1, failed: 2 })
  const ageAfter = await metrics.registry.getSingleMetric('gateway_write_behind_oldest_unsynced_seconds')!.get()
  t.equal(ageAfter.values[0]!.value, 0, 'all written: age 0')
  t.equal(await sync.flush(), true, 'nothing pending: no statement')
  t.equal(calls.length, 2)
  sync.record(policy, 'c', 1, 12)
  await sync.close()
  t.equal(calls.length, 3, 'close flushes once')
})

const system = writeBehindTwins

t.test('the flow on the twins: new-user, redis, one Redis call per request; a miss loads the truth; seeded only if absent', async (t) => {
  const { pg, redis, sync, limiter } = system()
  const sources: string[] = []
  for (let i = 0; i < 12; i++) {
    const d = await limiter.check(policy, 'alice', 1)
    sources.push(`${d.allowed ? 'allowed' : 'refused'}:${d.source}:${d.decidedBy}`)
  }
  t.same(sources, ['allowed:new-user:redis', ...Array(9).fill('allowed:redis:redis'), ...Array(2).fill('refused:redis:redis')])
  t.equal(pg.decideCalls, 0, 'PostgreSQL decided nothing')
  t.equal(redis.wbDecideCalls, 13, 'one Redis call per request, plus the seed of the miss')
  t.equal(pg.row('default', 'alice'), undefined, 'not written yet')
  await sync.flush()
  t.ok(Math.abs(pg.row('default', 'alice')!.tokens) < 1e-9, 'written behind: 0 tokens')

  // A known caller Redis does not hold: PostgreSQL's row (2 tokens) is the truth.
  await pg.ledger.sync([{ policy, userId: 'bob', tokens: 2, ageMs: 0 }])
  const bob = await Promise.all([1, 2, 3].map(async () => await limiter.check(policy, 'bob', 1)))
  t.same(bob.map((d) => d.allowed), [true, true, false], 'exactly the row\'s two tokens')
  t.equal(bob[0]!.source, 'postgres', 'loaded from PostgreSQL')
  t.same(bob.slice(1).map((d) => d.source), ['redis', 'redis'], 'concurrent misses: one seeds, the rest find it seeded')

  // Redis holds a state already: it is not replaced by PostgreSQL's (seeded only if absent).
  redis.set(redis.wbKey('default@10/1', 'carol'), `1|${redis.nowMs()}|w`, 10)
  const carol = [await limiter.check(policy, 'carol', 1), await limiter.check(policy, 'carol', 1)]
  t.same(carol.map((d) => [d.allowed, d.source]), [[true, 'redis'], [false, 'redis']], 'Redis\'s one token, not a full row')
})

t.test('Redis away: PostgreSQL decides strictly, and Redis refunds nothing when it answers again', async (t) => {
  const { clock, pg, redis, sync, limiter } = system()
  for (let i = 0; i < 4; i++) await limiter.check(policy, 'dave', 1)
  redis.down = true
  const during: string[] = []
  for (let i = 0; i < 8; i++) {
    const d = await limiter.check(policy, 'dave', 1)
    during.push(`${d.allowed ? 'allowed' : 'refused'}:${d.source}:${d.decidedBy}`)
  }
  t.same(during, [...Array(6).fill('allowed:postgres:postgres'), ...Array(2).fill('refused:postgres:postgres')],
    'PostgreSQL had the four Redis allowances (flushed on leaving Redis) and decided the other six')
  t.equal(sync.pending.size, 0, 'flushed on the switch')
  // Redis comes back with its stale state (6 tokens): it must first learn PostgreSQL's 0.
  redis.down = false
  t.match(parseValue(redis.get(redis.wbKey('default@10/1', 'dave'))), { tokens: 6 }, 'Redis still holds its old state')
  let back = null
  for (let i = 0; i < 50 && back === null; i++) {
    clock.now += 20
    await new Promise((resolve) => setImmediate(resolve))
    const d = await limiter.check(policy, 'dave', 1)
    if (d.decidedBy === 'redis') back = d
    else t.equal(d.allowed, false, 'still PostgreSQL, still refused')
  }
  t.ok(back !== null, 'Redis decides again')
  t.equal(back!.allowed, false, 'no refund: the first Redis decision after the switch refuses')
  t.ok(parseValue(redis.get(redis.wbKey('default@10/1', 'dave')))!.tokens < 1, 'Redis was lowered to PostgreSQL\'s state')
})

t.test('PostgreSQL down: Redis keeps deciding, flushes resume, nothing lost or raised', async (t) => {
  const { pg, sync, limiter } = system()
  await limiter.check(policy, 'erin', 1)
  await sync.flush()
  pg.down = true
  for (let i = 0; i < 5; i++) t.equal((await limiter.check(policy, 'erin', 1)).decidedBy, 'redis')
  t.equal(await sync.flush(), false, 'the flush fails')
  t.equal(sync.pending.size, 1, 'and is kept')
  pg.down = false
  t.equal(await sync.flush(), true)
  t.ok(Math.abs(pg.row('default', 'erin')!.tokens - 4) < 1e-9, 'the latest state: 10 - 6')
})

// Run for one bucket, and for a plan of two (decided together in one Redis step, one by one while Redis is away).
for (const planSize of [1, 2]) t.test(`property: one write-behind gateway through PostgreSQL and Redis outages never exceeds the bound, and PostgreSQL never holds more than the truth (${planSize} bucket${planSize === 1 ? '' : 's'} per request)`, async (t) => {
  const fc = (await import('fast-check')).default
  const { tokensAt: at } = await import('../src/core/token-bucket.ts')
  const { StoreUnavailableError } = await import('../src/core/errors.ts')
  const p: Policy = { name: 'default', capacity: 5, refillPerSecond: 1, cacheName: 'default@5/1', consistency: 'write-behind' }
  const q: Policy = { name: 'hourly', capacity: 3, refillPerSecond: 0.5, cacheName: 'hourly@3/0.5', consistency: 'write-behind' }
  const plan = [p, q].slice(0, planSize)
  const op = fc.oneof(
    fc.record({ kind: fc.constant('request' as const), caller: fc.constantFrom('a', 'b'), burst: fc.integer({ min: 1, max: 4 }) }),
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 1, max: 1500 }) }),
    fc.record({ kind: fc.constantFrom('flush' as const, 'redis-down' as const, 'redis-up' as const, 'pg-down' as const, 'pg-up' as const) }))
  let runs = 0
  await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 40 }), async (ops) => {
    runs++
    const { clock, pg, redis, sync, limiter } = system()
    const allowed = new Map<string, number[]>()
    const reference = (b: Policy, caller: string, nowMs: number): number => {
      let tokens = b.capacity
      let last = -Infinity
      for (const t of allowed.get(caller) ?? []) {
        tokens = last === -Infinity ? tokens : Math.min(b.capacity, tokens + ((t - last) * b.refillPerSecond) / 1000)
        tokens -= 1
        last = t
      }
      return last === -Infinity ? tokens : Math.min(b.capacity, tokens + ((nowMs - last) * b.refillPerSecond) / 1000)
    }
    // Double faults are kept out (docs/design.md, "The bound, per mode", weaker cases): Redis
    // lost while PostgreSQL is down (PostgreSQL later decides from rows lacking the flushes that
    // failed: the stated "plus a failed flush's retry"), and PostgreSQL lost while this gateway
    // is away from Redis (the strict fallback then decides, as in strict mode), ...
    let away = false
    for (const o of ops) {
      if (o.kind === 'redis-down' && pg.down) continue
      // ... and a bucket Redis does not hold while PostgreSQL is down (seeded full).
      if (o.kind === 'pg-down' && (away || redis.down || ['a', 'b'].some((c) => plan.some((b) => redis.get(redis.wbKey(b.cacheName!, c)) === undefined)))) continue
      if (o.kind === 'request') {
        const verdicts = await Promise.all(Array.from({ length: o.burst }, async () => {
          try { return await limiter.checkAll(plan.map((b) => ({ policy: b, userId: o.caller, cost: 1 })), o.caller) } catch (err) { if (err instanceof StoreUnavailableError) return null; throw err }
        }))
        for (const v of verdicts) {
          if (v === null) continue
          if (v.allowed) allowed.set(o.caller, [...(allowed.get(o.caller) ?? []), clock.now])
          // A refused plan reports the buckets it did not reach as they stand: only a charged one says who decided.
          if (v.decisions.some((d) => d.decidedBy === 'postgres')) away = true
          else if (v.allowed && v.decisions.every((d) => d.decidedBy === 'redis' && d.source !== 'redis-fallback')) away = false
        }
      } else if (o.kind === 'advance') clock.now += o.ms
      else if (o.kind === 'flush') await sync.flush()
      else if (o.kind === 'redis-down') redis.down = true
      else if (o.kind === 'redis-up') redis.down = false
      else if (o.kind === 'pg-down') pg.down = true
      else pg.down = false
      for (const caller of ['a', 'b']) {
        // (a) every window of the allowed history
        const times = allowed.get(caller) ?? []
        for (const b of plan) {
          for (let i = 0; i < times.length; i++) {
            for (let j = i; j < times.length; j++) {
              const bound = b.capacity + (b.refillPerSecond * (times[j]! - times[i]!)) / 1000
              if (j - i + 1 > bound + 1e-6) throw new Error(`${caller} ${b.name}: ${j - i + 1} allowed in [${times[i]}, ${times[j]}], bound ${bound}`)
            }
          }
        }
        // (b) once a flush has written everything, PostgreSQL's row is never above the truth (a
        // flush or a strict decision never raises it; between flushes it lags by design)
        for (const b of plan) {
          const row = pg.row(b.name, caller)
          if (o.kind === 'flush' && sync.pending.size === 0 && row !== undefined && at(row, b, clock.now) > reference(b, caller, clock.now) + 1e-6) {
            throw new Error(`${caller} ${b.name}: PostgreSQL holds ${at(row, b, clock.now)}, the truth is ${reference(b, caller, clock.now)}`)
          }
        }
      }
    }
    await limiter.close()
  }), { numRuns: Number(process.env.MODEL_RUNS ?? 150) })
  t.pass(`${runs} runs`)
})
