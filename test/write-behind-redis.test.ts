// The write-behind Redis adapter against the shared Redis (a key prefix of its own): the
// decisions of one turn of the event loop go to Redis in one script call, and come back to each
// request in the order they were made, exactly as one call each would have decided them; the
// same for requests of several buckets (groups), each all or nothing.
import { Redis } from 'ioredis'
import t from 'tap'
import type { Policy } from '../src/core/domain.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { StoreHealth } from '../src/stores/health.ts'
import { defineScripts, type ScriptedRedis } from '../src/stores/redis/scripts.ts'
import { RedisWriteBehind, writeBehindKey } from '../src/stores/redis/write-behind-redis.ts'
import { metricSum } from './helpers/metrics.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'

const policy: Policy = { name: 'burst', capacity: 5, refillPerSecond: 0.001 }

async function roundTrips (metrics: Metrics, operation: string, kind = 'gateway_store_operations_total'): Promise<number> {
  return await metricSum(metrics, kind, { store: 'redis', operation })
}

/** The adapter on a client of its own (auto-pipelined, as the decider's), under a key prefix of its own. */
async function adapter (t: { teardown: (fn: () => unknown) => void }): Promise<{ client: ScriptedRedis, prefix: string, metrics: Metrics, wb: RedisWriteBehind }> {
  const client = defineScripts(new Redis(TEST_REDIS_URL, { enableAutoPipelining: true }))
  const prefix = createRedisPrefix(t)
  t.teardown(() => { client.disconnect() })
  await new Promise<void>((resolve) => { client.once('ready', () => { resolve() }) })
  const metrics = new Metrics()
  const wb = new RedisWriteBehind(() => client, prefix, new StoreHealth('redis', createLogger('silent'), metrics), metrics, () => 3600)
  return { client, prefix, metrics, wb }
}

t.test('one turn of the event loop, one script call: each request gets its own verdict, in order', async (t) => {
  const { client, prefix, metrics, wb } = await adapter(t)

  await client.set(writeBehindKey(prefix, 'burst', 'alice'), `5|${Date.now()}|w`)
  const before = await roundTrips(metrics, 'wb-decide')
  // Eight of alice's (5 tokens), a stranger's (a miss) and a seeded one, all in this turn.
  const verdicts = await Promise.all([
    ...Array.from({ length: 8 }, async () => await wb.decide({ policy, userId: 'alice', cost: 1 })),
    wb.decide({ policy, userId: 'stranger', cost: 1 }),
    wb.seedAndDecide({ policy, userId: 'bob', cost: 2 }, 3)
  ])
  t.equal(await roundTrips(metrics, 'wb-decide') - before, 1, 'ten decisions, one round trip')
  t.same(verdicts.slice(0, 8).map((v) => v.kind === 'decided' && v.allowed), [true, true, true, true, true, false, false, false],
    "alice's first five allowed, the rest refused, in the order asked")
  const tokens = verdicts.slice(0, 8).map((v) => (v.kind === 'decided' ? Math.round(v.tokens * 100) / 100 : NaN))
  t.same(tokens, [4, 3, 2, 1, 0, 0, 0, 0], 'each sees what the one before it left')
  t.same(verdicts[8], { kind: 'miss' }, "a bucket Redis does not hold is a miss, not its neighbours' verdict")
  const bob = verdicts[9]!
  t.ok(bob.kind === 'decided' && bob.allowed && bob.seeded && Math.abs(bob.tokens - 1) < 0.01, 'the seeded bucket: seeded here, 3 - 2 left')

  // Sequential calls are separate turns: one round trip each.
  const mid = await roundTrips(metrics, 'wb-decide')
  for (let i = 0; i < 3; i++) await wb.decide({ policy, userId: 'carol', cost: 1 })
  t.equal(await roundTrips(metrics, 'wb-decide') - mid, 3, 'a request alone is not held back for company')
})

t.test('a failed call: every decision in it is unavailable (PostgreSQL decides them), the failure counted once', async (t) => {
  const { client, prefix, metrics, wb } = await adapter(t)
  // A key of another type makes the script fail (WRONGTYPE), as a Redis error would.
  await client.hset(writeBehindKey(prefix, 'burst', 'odd'), 'x', '1')
  const verdicts = await Promise.all([
    wb.decide({ policy, userId: 'odd', cost: 1 }),
    wb.decide({ policy, userId: 'dave', cost: 1 })
  ])
  t.same(verdicts, [{ kind: 'unavailable' }, { kind: 'unavailable' }], 'both unavailable: neither is guessed')
  t.equal(await roundTrips(metrics, 'wb-decide', 'gateway_store_errors_total'), 1, 'one failed round trip, one error')
})

t.test('several buckets per request: the groups of one turn in one script call, each all or nothing, in order', async (t) => {
  const { client, prefix, metrics, wb } = await adapter(t)
  const hourly: Policy = { name: 'hourly', capacity: 3, refillPerSecond: 0.001 }
  const plan = (userId: string) => [{ policy, userId, cost: 1 }, { policy: hourly, userId, cost: 1 }]
  await client.set(writeBehindKey(prefix, 'burst', 'erin'), `5|${Date.now()}|w`)
  await client.set(writeBehindKey(prefix, 'hourly', 'erin'), `3|${Date.now()}|w`)
  const before = await roundTrips(metrics, 'wb-decide')
  // Five of erin's plan requests (hourly has 3) and a stranger's (hourly missing), in this turn.
  const verdicts = await Promise.all([
    ...Array.from({ length: 5 }, async () => await wb.decideGroup(plan('erin'), [null, null])),
    wb.decideGroup(plan('frank'), [null, null])
  ])
  t.equal(await roundTrips(metrics, 'wb-decide') - before, 1, 'six requests of two buckets, one round trip')
  t.same(verdicts.slice(0, 5).map((v) => v?.kind === 'decided' && v.charged), [true, true, true, false, false], 'three charged, then refused by hourly')
  const fourth = verdicts[3]!
  t.ok(fourth.kind === 'decided' && fourth.buckets[0]!.allowed && !fourth.buckets[1]!.allowed, 'the refused one: burst could pay, hourly could not')
  t.same(verdicts[5], { kind: 'miss', missing: [true, true] }, 'a stranger: a miss naming its missing buckets')
  t.equal(Number((await client.get(writeBehindKey(prefix, 'burst', 'erin')))!.split('|')[0]), 2, 'burst charged only for the three charged requests')
  const named = await wb.decideGroup([{ policy, userId: 'gus', cost: 1 }, { policy, userId: 'gus', cost: 1 }], [null, null])
  t.equal(named, null, 'a bucket named twice: decided one by one instead')

  await client.hset(writeBehindKey(prefix, 'hourly', 'odd'), 'x', '1')
  const failed = await Promise.all([wb.decideGroup(plan('odd'), [1, 1]), wb.decideGroup(plan('erin'), [null, null])])
  t.same(failed, [{ kind: 'unavailable' }, { kind: 'unavailable' }], 'a failed call: every group in it unavailable')
  t.equal(await client.exists(writeBehindKey(prefix, 'burst', 'odd')), 0, 'the failing group wrote nothing (read before written)')
})
