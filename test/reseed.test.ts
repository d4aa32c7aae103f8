// A Redis restarted empty is given PostgreSQL's spent buckets again (src/limiter/reseed.ts).
// Without that, Redis takes every caller not decided since the restart over full the next time
// PostgreSQL fails, and admits again what PostgreSQL had granted.
import t from 'tap'
import type { Policy } from '../src/core/domain.ts'
import { Reseed } from '../src/limiter/reseed.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { MemoryPostgres, MemoryRedis, parseValue } from '../src/stores/memory/index.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { metricSum } from './helpers/metrics.ts'
import { startPrivatePostgres, startPrivateRedis } from './helpers/private-stores.ts'

const policy: Policy = { name: 'p', capacity: 3, refillPerSecond: 0.001, cacheName: 'p@3/0.001' }

function rig (now: () => number, pageSize = 1_000): { pg: MemoryPostgres, redis: MemoryRedis, reseed: Reseed<Policy>, metrics: Metrics } {
  const pg = new MemoryPostgres({ now })
  const redis = new MemoryRedis({ now })
  const metrics = new Metrics()
  const reseed = new Reseed(pg, redis.cache, { policies: () => [policy], effective: (p) => p, owner: 'me', metrics, log: createLogger('silent'), pageSize, retryMs: 60_000 })
  return { pg, redis, reseed, metrics }
}

const snapshotOf = (redis: MemoryRedis, user: string): string | undefined => redis.get(redis.key(policy.cacheName!, user))

t.test('writes a snapshot for each bucket PostgreSQL holds spent, page by page, then sets the marker', async (t) => {
  const now = 1_000_000
  const { pg, redis, reseed, metrics } = rig(() => now, 2)
  t.teardown(() => { reseed.close() })
  for (const [user, spent] of [['a', 3], ['b', 1], ['c', 2], ['d', 1], ['e', 3]] as const) await pg.decide({ policy, userId: user, cost: spent })
  await pg.decide({ policy: { ...policy, name: 'other' }, userId: 'a', cost: 1 })
  redis.lose()
  t.equal(await reseed.run(), 'done')
  for (const [user, left] of [['a', 0], ['b', 2], ['c', 1], ['d', 2], ['e', 0]] as const) {
    t.same(parseValue(snapshotOf(redis, user)), { tokens: left, at: now, kind: '' }, `${user}: PostgreSQL's row, as a snapshot`)
  }
  t.equal(redis.entries().filter(([k]) => k.includes('other')).length, 0, 'only the configured policies\' buckets')
  t.equal(await metricSum(metrics, 'gateway_redis_reseeded_buckets_total', {}), 5)
  t.equal(await reseed.run(), 'seeded', 'the marker is set: nothing to do')
  redis.lose()
  t.equal(await reseed.run(), 'done', 'lost again: re-seeded again')
})

t.test('a full bucket gets no snapshot (a miss starts full anyway), and a newer snapshot is not overwritten', async (t) => {
  let now = 1_000_000
  const { pg, redis, reseed } = rig(() => now)
  t.teardown(() => { reseed.close() })
  await pg.decide({ policy, userId: 'refilled', cost: 1 })
  await pg.decide({ policy, userId: 'newer', cost: 3 })
  now += 1_001_000 // 'refilled' has its token back; 'newer' only one
  redis.lose()
  redis.cache.write(redis.key(policy.cacheName!, 'newer'), { tokens: 0, atMs: now }, 10, 1) // a decision meanwhile
  t.equal(await reseed.run(), 'done')
  t.equal(snapshotOf(redis, 'refilled'), undefined)
  t.same(parseValue(snapshotOf(redis, 'newer')), { tokens: 0, at: now, kind: '' }, 'the decision\'s snapshot stays')
})

t.test('one gateway at a time; a failed one frees the claim; a reconnection starts one', async (t) => {
  const now = 1_000_000
  const { pg, redis, reseed } = rig(() => now)
  const log = createLogger('silent')
  const other = new Reseed(pg, redis.cache, { policies: () => [policy], effective: (p) => p, owner: 'other', metrics: new Metrics(), log, retryMs: 60_000 })
  t.teardown(() => { reseed.close(); other.close() })
  await pg.decide({ policy, userId: 'a', cost: 3 })
  t.equal(await redis.cache.claimReseed('other', 30_000), 'claimed')
  t.equal(await reseed.run(), 'busy', 'another gateway holds the claim')
  t.equal(snapshotOf(redis, 'a'), undefined)
  await redis.cache.endReseed('other', false)

  pg.down = true
  t.equal(await reseed.run(), 'failed', 'PostgreSQL does not answer')
  t.equal(await other.run(), 'failed', 'the claim was freed: the other gateway may try')
  pg.down = false

  void reseed.start() // listens for reconnections (and checks once now)
  await waitFor(() => snapshotOf(redis, 'a') !== undefined, { timeoutMs: 2_000, what: 'the re-seed started by start()' })
  redis.down = true
  redis.lose()
  redis.down = false // the reconnection
  await waitFor(() => snapshotOf(redis, 'a') !== undefined, { timeoutMs: 2_000, what: 'the re-seed started by the reconnection' })
  t.equal(await redis.cache.claimReseed('x', 1), 'seeded')
})

t.test('a Redis that lost its data without dropping the connection (FLUSHALL) is re-seeded at the next check', async (t) => {
  const now = 1_000_000
  const pg = new MemoryPostgres({ now: () => now })
  const redis = new MemoryRedis({ now: () => now })
  const reseed = new Reseed(pg, redis.cache, { policies: () => [policy], effective: (p) => p, owner: 'me', metrics: new Metrics(), log: createLogger('silent'), checkMs: 20 })
  t.teardown(() => { reseed.close() })
  await pg.decide({ policy, userId: 'a', cost: 3 })
  t.equal(await reseed.start(), 'done')
  redis.lose() // no reconnection
  await waitFor(() => snapshotOf(redis, 'a') !== undefined, { timeoutMs: 2_000, what: 'the periodic check to re-seed' })
})

t.test('Redis down: nothing is claimed, nothing written', async (t) => {
  const { redis, reseed } = rig(() => 1_000_000)
  t.teardown(() => { reseed.close() })
  redis.down = true
  t.equal(await reseed.run(), 'unavailable')
})

t.test('through the gateway: Redis restarted empty, then PostgreSQL down: spent callers stay spent, an overridden one too', async (t) => {
  const TOKEN = 'reseed-admin-token-0123456789'
  const pg = await startPrivatePostgres(t)
  const redis = await startPrivateRedis(t)
  const config = { limits: { capacity: 3, refillPerSecond: 0.001 }, fallback: { probeIntervalMs: 100, redisTimeoutMs: 3000 }, control: { adminToken: TOKEN } }
  const gw = await startTestGateway(t, { databaseUrl: pg.url, redisUrl: redis.url, config })
  const peer = await startTestGateway(t, { databaseUrl: pg.url, redisUrl: redis.url, redisPrefix: gw.redisPrefix, config })
  const done = async (): Promise<number> => await metricSum(gw.metrics, 'gateway_redis_reseeds_total', { result: 'done' }) +
    await metricSum(peer.metrics, 'gateway_redis_reseeds_total', { result: 'done' })
  await waitFor(async () => await done() === 1, { timeoutMs: 10_000, what: 'the first start\'s re-seed (nothing to write)' }).catch((err: unknown) => {
    t.comment([...gw.logs, ...peer.logs].filter((l) => l.level >= 40 || l.msg.includes('re-seed')))
    throw err
  })

  const put = await fetch(gw.controlUrl + '/v1/overrides/vip', { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ capacity: 5 }) })
  t.equal(put.status, 200, 'override set')
  await put.arrayBuffer()
  await waitFor(() => gw.overrides.table.get('default', 'vip') !== undefined && peer.overrides.table.get('default', 'vip') !== undefined, { timeoutMs: 5_000, what: 'the override on both gateways' })
  const ask = async (user: string): Promise<string> => {
    const r = await send(gw.proxyUrl + '/x', { user })
    return `${r.status} ${r.headers.get('x-data-source') ?? ''}`
  }
  const statuses = async (user: string, n: number): Promise<string[]> => { const out: string[] = []; for (let i = 0; i < n; i++) out.push((await ask(user)).slice(0, 3)); return out }
  t.same(await statuses('spent', 3), ['201', '201', '201'])
  t.same(await statuses('vip', 5), Array(5).fill('201'))
  t.same(await statuses('partly', 1), ['201'])

  await redis.kill()
  await redis.start()
  await waitFor(async () => await done() === 2, { timeoutMs: 20_000, what: 'one gateway to re-seed the restarted Redis' })
  t.equal(await metricSum(gw.metrics, 'gateway_redis_reseeded_buckets_total', {}) + await metricSum(peer.metrics, 'gateway_redis_reseeded_buckets_total', {}), 3,
    'three buckets written: spent, vip, partly')

  await pg.stop()
  t.same(await statuses('spent', 1), ['429'], 'spent before the restart: still spent')
  t.same(await statuses('vip', 1), ['429'], 'the overridden caller too (its own cache name)')
  t.same(await statuses('partly', 3), ['201', '201', '429'], 'two left of three')
  t.same(await ask('fresh'), '201 redis-fallback', 'a caller PostgreSQL never saw starts full in Redis')
})
