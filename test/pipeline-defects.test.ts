// Defects of the decision flow and its neighbours, each pinned by a test that fails when the
// defect is put back. No servers: the in-memory store ports (src/stores/memory).
import { Writable } from 'node:stream'
import t from 'tap'
import type { Config } from '../src/config/schema.ts'
import type { Policy } from '../src/core/domain.ts'
import { StoreFailure, StoreUnavailableError } from '../src/core/errors.ts'
import { Lifecycle } from '../src/lifecycle.ts'
import { Limiter } from '../src/limiter/limiter.ts'
import { LocalBuckets } from '../src/limiter/steps/local-buckets.ts'
import { createLogger, type Logger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { MemoryPostgres, MemoryRedis, parseValue } from '../src/stores/memory/index.ts'

const policy: Policy = { name: 'default', capacity: 5, refillPerSecond: 1 }
const metrics = new Metrics()

function fallback (mode: Config['fallback']['mode']): Config['fallback'] {
  return { redisDecides: true, redisTimeoutMs: 500, mode, localReplicas: 1, localMaxKeys: 1000, probeIntervalMs: 60_000, closedRetryAfterSeconds: 1 }
}

/** A logger whose lines are kept, parsed. */
function capture (level = 'info'): { log: Logger, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      done()
    }
  })
  return { log: createLogger(level, stream), lines }
}

function stores (now: () => number): { pg: MemoryPostgres, redis: MemoryRedis } {
  return { pg: new MemoryPostgres({ now }), redis: new MemoryRedis({ now }) }
}

/** A gateway (Limiter, closed fail mode) on the stores, closed at teardown; `now` is its own clock. */
function gatewayOn (t: { teardown: (fn: () => unknown) => void }, { pg, redis }: { pg: MemoryPostgres, redis: MemoryRedis }, now: () => number, log = createLogger('silent')): Limiter {
  const limiter = new Limiter({ store: pg, cache: redis.cache, redis: redis.decider }, { fallback: fallback('closed'), metrics, log, now })
  t.teardown(async () => await limiter.close())
  return limiter
}

t.test('a bucket being handed back, met while this gateway knows PostgreSQL is down: PostgreSQL is not asked', async (t) => {
  let now = 1_700_000_000_000
  const { pg, redis } = stores(() => now)
  const limiter = gatewayOn(t, { pg, redis }, () => now)

  t.equal((await limiter.check(policy, 'alice', 1)).source, 'new-user', 'PostgreSQL decides while it answers')
  pg.down = true
  const first = await limiter.check(policy, 'alice', 1)
  t.equal(first.source, 'redis-fallback', 'PostgreSQL failed: Redis decides')
  t.ok(limiter.postgresDown, 'and this gateway knows PostgreSQL is down')

  // Another gateway started a hand-back (it reached PostgreSQL, this one does not): "…|m".
  const key = redis.key(policy.name, 'alice')
  const owned = parseValue(redis.get(key))!
  t.equal(owned.kind, 'r')
  now += 500
  redis.set(key, `${owned.tokens}|${owned.at}|m`, 5)

  const asked = pg.decideCalls
  const d = await limiter.check(policy, 'alice', 1)
  t.equal(pg.decideCalls, asked, 'PostgreSQL, known to be down, was not asked at all')
  t.equal(d.source, 'redis-fallback', 'Redis took the bucket back and decided')
  t.ok(d.allowed)
  t.equal(d.tokens, owned.tokens + 0.5 - 1, 'from the handed-back state, refilled')
  t.equal(parseValue(redis.get(key))?.kind, 'r', 'the bucket is Redis-owned again')
})

t.test('both stores down, closed: the 503 error carries the store failure, and the transition is logged once', async (t) => {
  const now = 1_700_000_000_000
  const { pg, redis } = stores(() => now)
  const { log, lines } = capture()
  const limiter = gatewayOn(t, { pg, redis }, () => now, log)
  pg.down = true
  redis.down = true

  const errors: StoreUnavailableError[] = []
  for (let i = 0; i < 5; i++) {
    await limiter.check(policy, 'alice', 1).then(
      () => t.fail('allowed with both stores down in closed mode'),
      (err: unknown) => { if (err instanceof StoreUnavailableError) errors.push(err); else throw err })
  }
  t.equal(errors.length, 5, 'every request refused with StoreUnavailableError')
  for (const err of errors) {
    t.ok(err.cause instanceof StoreFailure, 'its cause is the store failure')
    t.equal((err.cause as StoreFailure).store, 'postgres')
    t.match(((err.cause as StoreFailure).cause as Error).message, /ECONNREFUSED/, 'which chains to the driver error')
  }
  t.equal(errors[4]!.cause, errors[0]!.cause, 'the failure that started the outage')

  const transitions = lines.filter((l) => l.mode === 'closed')
  t.equal(transitions.length, 1, 'one line for the transition, not one per request')
  t.equal(transitions[0]!.previous_mode, 'postgres')
  t.equal((transitions[0]!.err as { type?: string }).type, 'StoreFailure', 'with the store error')
  t.equal(limiter.mode, 'closed')
})

t.test('LocalBuckets: the sweep judges each bucket by the share it was spent under', async (t) => {
  let now = 0
  const buckets = new LocalBuckets(1, 3, () => now)
  // An override makes two policies of one name: different numbers, different cache names.
  const roomy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1, cacheName: 'default~10~1' }
  const tight: Policy = { name: 'default', capacity: 1, refillPerSecond: 10, cacheName: 'default~1~10' }

  // Least recently used first: q, p, r. By its own numbers only p is full at 1000 ms.
  buckets.consume(roomy, 'q', 2) // 8 tokens: full at 2000 ms
  now = 100
  buckets.consume(tight, 'p', 1) // full again at 200 ms by its numbers; by the roomy ones not before 10 s
  now = 950
  buckets.consume(roomy, 'r', 1) // 9 tokens: full at 1950 ms
  t.equal(buckets.size, 3)
  now = 1_000
  buckets.consume(roomy, 's', 1) // a fourth key: the sweep runs
  t.equal(buckets.size, 3, 'the sweep made room by dropping the full bucket, p')
  // Judged by the tight numbers (capacity 1), q and r would look full and be dropped; judged by
  // the roomy ones, p would stay and q, the least recently used, be dropped: either refunds q.
  t.equal(buckets.consume(roomy, 'q', 1).tokens, 8 + 1 - 1, 'q kept its spending')
  t.equal(buckets.consume(roomy, 'r', 1).tokens, 9 + 0.05 - 1, 'r kept its spending')
  t.equal(buckets.size, 3, 'no key was added back')
})

t.test('LocalBuckets: policies of one name but other numbers keep separate buckets and shares', async (t) => {
  const now = 0
  const buckets = new LocalBuckets(2, 100, () => now)
  const roomy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1, cacheName: 'default~10~1' }
  const tight: Policy = { name: 'default', capacity: 2, refillPerSecond: 1, cacheName: 'default~2~1' }
  t.equal(buckets.consume(roomy, 'u', 1).tokens, 4, 'half of 10, less 1')
  t.equal(buckets.consume(tight, 'u', 1).tokens, 0, 'half of 2, less 1: its own bucket')
  t.equal(buckets.consume(roomy, 'u', 1).tokens, 3, 'the roomy bucket was not touched by the tight one')
  t.equal(buckets.share(roomy).capacity, 5)
  t.equal(buckets.share(tight).capacity, 1)
  t.equal(buckets.share(roomy), buckets.share(roomy), 'one share per policy object')
  const reloaded: Policy = { ...roomy }
  t.not(buckets.share(reloaded), buckets.share(roomy), 'a new policy object (a reload) gets its own share, the old one can be collected')
})

t.test('Lifecycle: closes in reverse order, once; a failing close is logged and the rest still close', async (t) => {
  const { log, lines } = capture('warn')
  const life = new Lifecycle(log)
  const closed: string[] = []
  life.add('first', 'a', (r) => { closed.push(r) })
  life.add('second', 'b', async (r) => { closed.push(r); throw new Error('b would not close') })
  life.add('third', 'c', (r) => { closed.push(r); throw new Error('c threw at once') })
  life.add('fourth', 'd', async (r) => { closed.push(r) })

  const closing = life.close()
  t.equal(life.close(), closing, 'a second close() returns the same promise')
  await t.resolves(closing, 'failing closes do not make close() throw')
  t.same(closed, ['d', 'c', 'b', 'a'], 'reverse order of start, each once, past the failures')
  await life.close()
  t.same(closed, ['d', 'c', 'b', 'a'], 'closing again closes nothing twice')
  const warnings = lines.filter((l) => l.msg === 'closing failed; continuing with the rest')
  t.same(warnings.map((l) => l.resource), ['third', 'second'], 'each failure logged, with its resource')
  t.match(warnings.map((l) => (l.err as { message: string }).message), ['c threw at once', 'b would not close'])
})

t.test('a gateway whose clock runs ahead, before its first PostgreSQL reply, does not refill a snapshot Redis takes over into the future', async (t) => {
  let db = 1_700_000_000_000
  const { pg, redis } = stores(() => db)
  const gatewayAhead = () => db + 1_000 // this host's clock runs 1 s ahead of the database's
  // Another gateway spent the bucket: PostgreSQL's snapshot, cached, on the database clock.
  const key = redis.key(policy.name, 'ahead')
  redis.set(key, `0|${db}`, 60)
  pg.down = true
  const limiter = gatewayOn(t, { pg, redis }, gatewayAhead)
  const d = await limiter.check(policy, 'ahead', 1)
  t.equal(d.source, 'redis-fallback', 'Redis decides (PostgreSQL down)')
  t.equal(d.allowed, false, 'no token refilled from the gateway\'s fast clock (1 s ahead would have granted one)')
  db += 1_000
  t.equal((await limiter.check(policy, 'ahead', 1)).allowed, true, 'refill on the Redis clock continues from the take-over')
})

t.test('a plan with one bucket Redis-owned and one being handed back, PostgreSQL up: each decided by its owner, not PostgreSQL for both', async (t) => {
  const now = 1_700_000_000_000
  const { pg, redis } = stores(() => now)
  const limiter = gatewayOn(t, { pg, redis }, () => now)
  const burst: Policy = { name: 'burst', capacity: 5, refillPerSecond: 0.001 }
  const hourly: Policy = { name: 'hourly', capacity: 5, refillPerSecond: 0.001 }
  // Another gateway lost PostgreSQL: Redis spent burst down to 1 (PostgreSQL's row knows
  // nothing of it), and a hand-back of hourly is in progress.
  redis.set(redis.key('burst', 'ann'), `1|${now}|r`, 60)
  redis.set(redis.key('hourly', 'ann'), `4|${now}|m`, 60)
  const first = await limiter.checkAll([{ policy: burst, userId: 'ann', cost: 1 }, { policy: hourly, userId: 'ann', cost: 1 }], 'ann')
  t.ok(first.allowed, 'allowed: burst has 1 in Redis')
  t.same(Object.fromEntries(first.decisions.map((d) => [d.policy.name, d.decidedBy])), { burst: 'redis', hourly: 'postgres' }, 'each bucket by its owner')
  t.equal(parseValue(redis.get(redis.key('burst', 'ann')))!.tokens, 0, 'burst charged in Redis')
  const second = await limiter.checkAll([{ policy: burst, userId: 'ann', cost: 1 }, { policy: hourly, userId: 'ann', cost: 1 }], 'ann')
  t.notOk(second.allowed, 'refused: Redis\'s burst is empty (PostgreSQL\'s full row would have allowed it)')
})
