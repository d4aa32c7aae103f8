// The snapshot cache's writes against the shared Redis (a key prefix of its own): a write waits
// for the next read to travel in its pipeline (one Redis round trip per lone request, not two),
// and nothing that relies on the write having landed waits for that: a read made after it sees
// it, and `settled()` (what a take-over and a shutdown wait for) sends it at once. The hold is
// made a minute long here, so a write that only the timer would send fails the test.
import { Redis } from 'ioredis'
import t from 'tap'
import type { BucketSnapshot } from '../src/core/domain.ts'
import { loadConfig } from '../src/config/load.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { StoreHealth } from '../src/stores/health.ts'
import { decode, RedisSnapshotCache } from '../src/stores/redis/snapshot-cache.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'

const HOLD_MS = 60_000

async function cache (t: { teardown: (fn: () => unknown) => void }): Promise<{ snapshots: RedisSnapshotCache, redis: Redis }> {
  const prefix = createRedisPrefix(t)
  const config = loadConfig({ env: { REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix }, skipDefaultFile: true })
  const metrics = new Metrics()
  const snapshots = new RedisSnapshotCache(config.redis, new StoreHealth('redis', createLogger('silent'), metrics), metrics, HOLD_MS)
  await snapshots.start()
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(async () => { await snapshots.close(); redis.disconnect() })
  return { snapshots, redis }
}

const snapshot = (tokens: number): BucketSnapshot => ({ tokens, atMs: Date.now() })

t.test('a read made after a write sees it: the waiting write goes first, in the same pipeline', async (t) => {
  const { snapshots } = await cache(t)
  const key = snapshots.key('default@10/1', 'alice')
  t.same(await snapshots.read(key), { kind: 'miss' }, 'nothing cached yet')
  snapshots.write(key, snapshot(7), 60, 0)
  const read = await snapshots.read(key)
  t.equal(read.kind, 'snapshot')
  t.equal((read as { tokens: number }).tokens, 7, 'the snapshot just written')
  // Another caller's read carries a waiting write too.
  const other = snapshots.key('default@10/1', 'bob')
  snapshots.write(key, snapshot(6), 60, 0)
  t.same(await snapshots.read(other), { kind: 'miss' })
  t.equal((await snapshots.read(key) as { tokens: number }).tokens, 6)
  // Several keys read at once (one MGET, a request of several policies) see a write waiting too.
  snapshots.write(key, snapshot(5), 60, 0)
  const both = await Promise.all([snapshots.read(other), snapshots.read(key)])
  t.same(both[0], { kind: 'miss' })
  t.equal((both[1] as { tokens: number }).tokens, 5, 'written before the MGET read it')
})

t.test('settled() sends a waiting write at once and resolves when it has landed', async (t) => {
  const { snapshots, redis } = await cache(t)
  const key = snapshots.key('default@10/1', 'carol')
  snapshots.write(key, snapshot(3), 60, 0)
  t.equal(await redis.get(key), null, 'waiting for a read: not in Redis yet')
  await snapshots.settled()
  const stored = await redis.get(key)
  t.not(stored, null, 'in Redis once settled() resolved')
  t.equal(decode(stored!)?.tokens, 3)
})
