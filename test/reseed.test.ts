// A Redis restarted empty is given PostgreSQL's spent buckets again (src/limiter/reseed.ts).
// Without that, Redis takes every caller not decided since the restart over full the next time
// PostgreSQL fails, and admits again what PostgreSQL had granted.
import calculateSlot from 'cluster-key-slot'
import { Redis } from 'ioredis'
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
import { startRedisCluster } from './helpers/redis-topologies.ts'

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

t.test('Redis losing its data during a run fails the run (no marker); the next run writes every bucket again', async (t) => {
  const now = 1_000_000
  const { pg, redis, metrics } = rig(() => now)
  for (const user of ['a', 'b', 'c', 'd', 'e']) await pg.decide({ policy, userId: user, cost: 3 })
  // Redis restarts empty while the second page is read: the first page's snapshots are gone.
  let pages = 0
  const losing = { spentBuckets: async (...args: Parameters<MemoryPostgres['spentBuckets']>) => {
    if (pages++ === 1) redis.lose()
    return await pg.spentBuckets(...args)
  } } as unknown as MemoryPostgres
  const reseed = new Reseed(losing, redis.cache, { policies: () => [policy], effective: (p) => p, owner: 'me', metrics, log: createLogger('silent'), pageSize: 2, retryMs: 60_000 })
  t.teardown(() => { reseed.close() })
  t.equal(await reseed.run(), 'failed', 'the claim was lost with the data: the run fails')
  t.equal(snapshotOf(redis, 'a'), undefined, 'the first page is gone')
  t.equal(await redis.cache.claimReseed('x', 1), 'claimed', 'no marker was set')
  await redis.cache.endReseed('x', false)
  t.equal(await reseed.run(), 'done')
  for (const user of ['a', 'b', 'c', 'd', 'e']) t.ok(snapshotOf(redis, user) !== undefined, `${user} written`)

  // Lost after the last page, before the marker: the end finds the run's record gone.
  redis.lose()
  const cache = redis.cache
  const endLosing = new Proxy(cache, {
    get: (target, prop) => prop === 'endReseed'
      ? async (owner: string, done: boolean) => { if (done) redis.lose(); return await target.endReseed(owner, done) }
      : (typeof Reflect.get(target, prop) === 'function' ? (Reflect.get(target, prop) as (...a: unknown[]) => unknown).bind(target) : Reflect.get(target, prop))
  })
  const ending = new Reseed(pg, endLosing, { policies: () => [policy], effective: (p) => p, owner: 'me', metrics, log: createLogger('silent'), retryMs: 60_000 })
  t.teardown(() => { ending.close() })
  t.equal(await ending.run(), 'failed', 'lost before the marker: failed')
  t.equal(await redis.cache.claimReseed('x', 1), 'claimed', 'and no marker')
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

t.test('a Redis Cluster: a shard that lost its data is re-seeded, though the other shards kept theirs', async (t) => {
  const pg = await startPrivatePostgres(t)
  const cluster = await startRedisCluster(t, 3)
  const config = { limits: { capacity: 3, refillPerSecond: 0.001 }, fallback: { probeIntervalMs: 100, redisTimeoutMs: 3000 }, redis: { reseedCheckMs: 200 } }
  const gw = await startTestGateway(t, { databaseUrl: pg.url, redisUrl: cluster.url, redisPrefix: 'rlc:', config })
  await waitFor(async () => (await gw.redis.ping()) === 'up', { timeoutMs: 15_000, what: 'the cluster client to be ready' })
  const done = async (): Promise<number> => await metricSum(gw.metrics, 'gateway_redis_reseeds_total', { result: 'done' })
  await waitFor(async () => await done() >= 1, { timeoutMs: 20_000, what: 'the first check to mark every shard' })

  const users = Array.from({ length: 12 }, (_, i) => `shard-${i}`)
  const statuses: number[] = []
  for (const user of users) for (let i = 0; i < 3; i++) statuses.push((await send(gw.proxyUrl + '/x', { user })).status)
  t.same(statuses, Array(3 * users.length).fill(201), 'every caller spends its 3 tokens')
  const key = (user: string): string => `rlc:{default@3/0.001:${user}}`
  // Which node serves which slot (CLUSTER SLOTS from any node: they agree).
  const admin = new Redis({ port: cluster.ports[0]!, host: '127.0.0.1', maxRetriesPerRequest: 0 })
  t.teardown(() => { admin.disconnect() })
  const ranges = await admin.cluster('SLOTS')
  const portOf = (k: string): number => { const slot = calculateSlot(k); return ranges.find(([from, to]) => slot >= from && slot <= to)![2]![1] }
  const onNode = async (port: number): Promise<string[]> => {
    const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 })
    try { return await c.keys('rlc:{*') } finally { c.disconnect() }
  }
  await waitFor(async () => (await Promise.all(cluster.ports.map(onNode))).flat().length === users.length, { timeoutMs: 5_000, what: 'every snapshot written' })
  // A node that does not hold the slot of `{reseed}` (where a single marker would live) but holds buckets.
  const victim = cluster.ports.find((p) => p !== portOf('rlc:seeded{reseed}') && users.some((u) => portOf(key(u)) === p))!
  const lost = users.filter((u) => portOf(key(u)) === victim)
  t.ok(lost.length > 0, `${lost.length} callers' buckets on node ${victim}`)

  const flushed = new Redis({ port: victim, host: '127.0.0.1', maxRetriesPerRequest: 0 })
  await flushed.flushall()
  flushed.disconnect()
  await waitFor(async () => await done() >= 2, { timeoutMs: 15_000, what: 'the periodic check to find the shard unmarked and re-seed' })
  t.same((await onNode(victim)).sort(), lost.map(key).sort(), 'the flushed shard holds its callers\' snapshots again')

  await pg.stop()
  const after: number[] = []
  for (const user of users) after.push((await send(gw.proxyUrl + '/x', { user })).status)
  t.same(after, Array(users.length).fill(429), 'PostgreSQL down: every caller still spent when Redis decides')
})
