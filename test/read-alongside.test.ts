// The Redis read alongside the PostgreSQL decision (src/limiter/steps/read-alongside.ts): for a
// bucket this process has not recently seen low both start at once, and the result,
// X-Data-Source and decided_by included, is what the steps one after the other give; a bucket
// seen low is read first, so a snapshot refusal still spares PostgreSQL. In-memory stores.
import t from 'tap'
import type { Config } from '../src/config/schema.ts'
import type { Decision, Policy } from '../src/core/domain.ts'
import type { CacheRead, SnapshotCache } from '../src/core/ports.ts'
import { handBack } from '../src/limiter/hand-back.ts'
import { Limiter } from '../src/limiter/limiter.ts'
import { RecentlyLow } from '../src/limiter/steps/recently-low.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { MemoryPostgres, MemoryRedis, parseValue } from '../src/stores/memory/index.ts'
import { encodeMember } from '../src/stores/owned-member.ts'

const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1 }
const metrics = new Metrics()
const fallback: Config['fallback'] = { redisDecides: true, redisTimeoutMs: 500, mode: 'closed', localReplicas: 1, localMaxKeys: 1000, probeIntervalMs: 60_000, closedRetryAfterSeconds: 1 }

interface Rig { limiter: Limiter, pg: MemoryPostgres, redis: MemoryRedis, events: string[], set: (ms: number) => void, advance: (ms: number) => void }

/** A limiter on the in-memory stores; `events` records when each read and decision starts. */
function rig (t: { teardown: (fn: () => unknown) => void }, readAlongside = true): Rig {
  let now = 1_700_000_000_000
  const pg = new MemoryPostgres({ now: () => now })
  const redis = new MemoryRedis({ now: () => now })
  const events: string[] = []
  const decide = pg.decide.bind(pg)
  pg.decide = async (request) => { events.push('decide'); return await decide(request) }
  const cache = redis.cache
  const traced: SnapshotCache = Object.assign(Object.create(Object.getPrototypeOf(cache)) as SnapshotCache, cache, {
    key: cache.key.bind(cache),
    write: cache.write.bind(cache),
    remove: cache.remove.bind(cache),
    ping: cache.ping.bind(cache),
    settled: cache.settled.bind(cache),
    read: async (key: string): Promise<CacheRead> => {
      events.push('read')
      // A read that takes a while: a decision started alongside is already on its way.
      await new Promise((resolve) => setImmediate(resolve))
      const got = await cache.read(key)
      events.push('read done')
      return got
    }
  })
  const limiter = new Limiter({ store: pg, cache: traced, redis: redis.decider }, { fallback, metrics, log: createLogger('silent'), now: () => now, readAlongside })
  t.teardown(async () => await limiter.close())
  return { limiter, pg, redis, events, set: (ms) => { now = ms }, advance: (ms) => { now += ms } }
}

const summary = (d: Decision): string => `${d.allowed ? 'allowed' : 'refused'} ${d.source}/${d.decidedBy} ${d.tokens.toFixed(3)}`

async function settle (): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
}

t.test('a bucket not seen low: decision and read start together, same result and source', async (t) => {
  const { limiter, events } = rig(t)
  const first = await limiter.check(policy, 'alice', 1)
  t.equal(summary(first), 'allowed new-user/postgres 9.000', 'a new caller: PostgreSQL creates the row')
  t.same(events, ['decide', 'read', 'read done'], 'overlapped from the first request: a bucket never seen is not low')
  await settle() // the snapshot write lands in Redis
  events.length = 0
  const second = await limiter.check(policy, 'alice', 1)
  t.same(events, ['decide', 'read', 'read done'], 'overlapped: PostgreSQL was asked before the read answered')
  t.equal(summary(second), 'allowed redis/postgres 8.000', 'Redis held a snapshot: X-Data-Source redis, decided by PostgreSQL, as before')
})

t.test('the same decisions, sources and tokens as the sequential steps, over a spending history', async (t) => {
  // One limiter with the overlap, one with the steps one after the other, the same history.
  const a = rig(t)
  const b = rig(t, false)
  const got: string[][] = [[], []]
  const overlapped = [0, 0]
  const costs = [1, 1, 2, 1, 1, 3, 1, 1, 2, 6, 4, 1, 1, 1, 2, 1]
  for (let i = 0; i < costs.length; i++) {
    a.events.length = 0
    b.events.length = 0
    const [da, db] = [await a.limiter.check(policy, 'bob', costs[i]!), await b.limiter.check(policy, 'bob', costs[i]!)]
    // A decision that started before the read is one the overlap took.
    if (a.events[0] === 'decide') overlapped[0]!++
    if (b.events[0] === 'decide') overlapped[1]!++
    got[0]!.push(summary(da))
    got[1]!.push(summary(db))
    await settle()
    a.advance(700)
    b.advance(700)
  }
  t.same(got[0], got[1], 'identical decisions')
  t.ok(overlapped[0]! > 2, `and the overlap was taken several times (${overlapped[0]!})`)
  t.ok(got[0]!.some((s) => s.startsWith('refused')), 'the history includes refusals')
  t.equal(overlapped[1], 0, 'the other never overlapped')
})

t.test('every batch slot in flight: read first (the decision would wait for a slot anyway, and the next batch grows)', async (t) => {
  const { limiter, pg, events } = rig(t)
  pg.busy = true
  await limiter.check(policy, 'erin', 1)
  t.same(events, ['read', 'read done', 'decide'], 'sequential while PostgreSQL is saturated')
  pg.busy = false
  events.length = 0
  await limiter.check(policy, 'erin', 1)
  t.same(events, ['decide', 'read', 'read done'], 'overlapped again once a slot is free')
})

t.test('a bucket seen low is read first: the snapshot refuses and PostgreSQL is not asked', async (t) => {
  const { limiter, pg, events } = rig(t)
  t.equal((await limiter.check(policy, 'carol', 9)).tokens, 1, 'one token left: not plenty')
  await settle()
  events.length = 0
  const asked = pg.decideCalls
  const refused = await limiter.check(policy, 'carol', 2)
  t.equal(summary(refused), 'refused redis/redis 1.000', 'refused from the snapshot, decided by Redis (X-Data-Source redis)')
  t.equal(pg.decideCalls, asked, 'PostgreSQL was not asked')
  t.same(events, ['read', 'read done'])
})

t.test('a bucket seen with plenty, drained since by another gateway: the snapshot\'s refusal, as before', async (t) => {
  const { limiter, pg, redis } = rig(t)
  await limiter.check(policy, 'dave', 1)
  await settle()
  // Another gateway spends the rest (its own PostgreSQL decision and snapshot write).
  const other = new Limiter({ store: pg, cache: redis.cache, redis: redis.decider }, { fallback, metrics, log: createLogger('silent'), now: () => pg.nowMs() })
  t.teardown(async () => await other.close())
  t.ok((await other.check(policy, 'dave', 9)).allowed)
  await settle()
  const refused = await limiter.check(policy, 'dave', 1)
  t.equal(summary(refused), 'refused redis/redis 0.000', 'PostgreSQL (asked alongside) refused too; the answer is the snapshot refusal the sequential steps give')
  t.equal(pg.row(policy.name, 'dave')!.tokens, 0, 'nothing was charged')
  t.equal((await limiter.check(policy, 'dave', 1)).source, 'redis', 'and the bucket, now seen low, is read first again')
})

t.test('the read finds the bucket Redis-owned: the early answer is not used, Redis decides', async (t) => {
  const { limiter, redis } = rig(t)
  await limiter.check(policy, 'erin', 1)
  await settle()
  // Another gateway lost PostgreSQL and Redis took the bucket over with 2 tokens left.
  const key = redis.key(policy.name, 'erin')
  redis.set(key, `2|${redis.nowMs()}|r`, 60)
  const d = await limiter.check(policy, 'erin', 1)
  t.equal(summary(d), 'allowed redis-fallback/redis 1.000', 'decided by Redis from its own state')
})

// The interleaving of test/store-stall.test.ts's split brain: another gateway's hand-back holds
// the row locked, so this gateway's early decision waits behind the merge. Redis must not decide
// the request before that decision has landed: the merge would then hold Redis's charge and
// PostgreSQL would charge the same request again on the merged row.
for (const [label, gapMs] of [['the same instant as the merge: Redis decides it', 0], ['after the merge: PostgreSQL\'s answer stands, the bucket stays PostgreSQL\'s', 1]] as const) {
  t.test(`the early decision waited on a hand-back's row lock, stamped ${label}; the request is counted once`, async (t) => {
    const { limiter, pg, redis, advance } = rig(t)
    await limiter.check(policy, 'fay', 1)
    await settle()
    const key = redis.key(policy.name, 'fay')
    // Redis took the bucket over and spent 4 of its 9 while PostgreSQL still says 9.
    redis.set(key, `5|${redis.nowMs()}|r`, 60)
    redis.sadd(encodeMember(policy, 'fay'))
    let release!: () => void
    const locked = new Promise<void>((resolve) => { release = resolve })
    const decide = pg.decide.bind(pg)
    pg.decide = async (request) => { await locked; pg.decide = decide; return await decide(request) }
    const pending = limiter.check(policy, 'fay', 1)
    await settle()
    // The hand-back merges what Redis holds now, then the early decision gets the row.
    await handBack(pg, redis.decider)
    advance(gapMs)
    release()
    const d = await pending
    t.ok(d.allowed, `the request is allowed (${summary(d)})`)
    t.equal(parseValue(redis.get(key))!.kind === 'r', gapMs === 0, gapMs === 0 ? 'Redis took it over (the order of the two is not known)' : 'not taken over again')
    let more = 0
    while ((await limiter.check(policy, 'fay', 1)).allowed && more < 20) more++
    t.equal(more, 4, '9 - 4 spent in Redis - this request: 4 more, the request charged once')
  })
}

t.test('the early decision fails while the read finds the bucket Redis-owned: PostgreSQL is taken as down, Redis decides', async (t) => {
  const { limiter, pg, redis, events } = rig(t)
  await limiter.check(policy, 'gus', 1)
  await settle()
  redis.set(redis.key(policy.name, 'gus'), `3|${redis.nowMs()}|m`, 60)
  pg.down = true
  events.length = 0
  const d = await limiter.check(policy, 'gus', 1)
  t.equal(events.filter((e) => e === 'decide').length, 1, 'PostgreSQL asked once (the early decision)')
  t.equal(summary(d), 'allowed redis-fallback/redis 2.000', 'Redis takes the bucket back and decides; PostgreSQL is not asked again')
  t.ok(limiter.postgresDown, 'the early decision\'s failure started the outage')
})

t.test('RecentlyLow: remembers buckets seen low for a while, in bounded memory', async (t) => {
  const low = new RecentlyLow(0, 4)
  const req = { policy, userId: 'u', cost: 1 }
  low.seen('a', req, 9, 0)
  low.seen('b', req, 4, 0)
  t.notOk(low.low('a', 5_000), 'nine of ten left: not low')
  t.notOk(low.low('never', 0), 'a bucket never seen: not low (overlapped)')
  t.ok(low.low('b', 5_000), 'four of ten: below half, read first')
  t.notOk(low.low('b', 10_001), 'forgotten after 10 s')
  low.seen('a', req, 1, 6_000)
  t.ok(low.low('a', 6_000), 'seen low since: read first')
  low.seen('a', req, 10, 7_000)
  t.notOk(low.low('a', 7_000), 'full again: overlapped')
  low.markLow('c', 0)
  t.ok(low.low('c', 0), 'marked (a snapshot refusal, a Redis-owned read)')
  for (let i = 0; i < 20; i++) low.markLow(`k${i}`, 0)
  t.ok(low.size <= 8, `at most two generations of 4 keys (${low.size})`)
  t.ok(low.low('k19', 0), 'the newest are kept')
})
