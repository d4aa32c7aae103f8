// REDIS_URL naming a Redis Cluster or a Sentinel: a real three-node cluster of local
// redis-server processes (and a real sentinel), with the exactness checks run through the gateway.
// A slow refill makes "exactly the capacity" exact however long a burst takes on a loaded machine
// (the invariant is capacity + rate × elapsed).
import t from 'tap'
import { parseRedisUrl } from '../src/config/redis-url.ts'
import { loadConfig } from '../src/config/load.ts'
import { burst as burstScenario, cacheVsDb } from '../scripts/scenarios-lib.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { burst, send, waitFor } from './helpers/http.ts'
import { keysPerNode, startRedisCluster, startRedisSentinel, startUnformedCluster } from './helpers/redis-topologies.ts'

const SLOW = { limits: { capacity: 10, refillPerSecond: 0.01 } }
/** /both charges two write-behind buckets together (a Cluster holds them in different slots). */
const TWO_BUCKETS = {
  policies: { wideA: { capacity: 10, refillPerSecond: 0.01, consistency: 'write-behind' }, narrowB: { capacity: 5, refillPerSecond: 0.01, consistency: 'write-behind' } },
  routes: [{ path: '/both', policy: ['wideA', 'narrowB'] }]
}

t.test('REDIS_URL forms', async (t) => {
  t.same(parseRedisUrl('redis://127.0.0.1:6379/2'), { mode: 'standalone', url: 'redis://127.0.0.1:6379/2' })
  t.same(parseRedisUrl('redis+cluster://a:7000,b:7001,[::1]:7002'), {
    mode: 'cluster', tls: false, nodes: [{ host: 'a', port: 7000 }, { host: 'b', port: 7001 }, { host: '::1', port: 7002 }]
  })
  t.same(parseRedisUrl('rediss+cluster://user:p%40ss@a'), { mode: 'cluster', tls: true, nodes: [{ host: 'a', port: 6379 }], username: 'user', password: 'p@ss' })
  t.same(parseRedisUrl('redis+sentinel://:secret@s1,s2:26380/mymaster/3'), {
    mode: 'sentinel', tls: false, masterName: 'mymaster', db: 3, password: 'secret',
    sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26380 }]
  })
  for (const [bad, why] of [
    ['http://x', /must start with redis/],
    ['redis+cluster://', /at least one host/],
    ['redis+cluster://a:1/1', /only database 0/],
    ['redis+cluster://a:99999', /1-65535/],
    ['redis+sentinel://s1:26379', /master name/],
    ['redis+sentinel://s1/m/x', /database number/]
  ] as const) {
    t.throws(() => parseRedisUrl(bad), why, bad)
  }
  t.throws(() => loadConfig({ env: { REDIS_URL: 'redis+cluster://' }, skipDefaultFile: true }), /redis\.url: .*at least one host.*\(from REDIS_URL\)/, 'a bad REDIS_URL names the field')
})

t.test('Redis Cluster of three local nodes', async (t) => {
  const cluster = await startRedisCluster(t, 3)
  // The per-test prefix needs no cleanup: the whole cluster is thrown away at teardown.
  const gw = await startTestGateway(t, { redisUrl: cluster.url, redisPrefix: 'rlc:', config: SLOW })
  // The cluster client learns the slot map after start-up; on a loaded machine that can take a while.
  await t.resolves(waitFor(async () => (await gw.redis.ping()) === 'up', { timeoutMs: 15_000, what: 'the cluster client to be ready' }), 'the gateway reaches the cluster')

  const seed = await cacheVsDb(gw.proxyUrl + '/', 'cluster-cache')
  t.same(seed.outcomes.map((o) => o.source), ['new-user', 'redis', 'redis'], 'snapshots are read back from the cluster')

  const users = Array.from({ length: 8 }, (_, i) => `cluster-fresh-${i}`)
  const results = await Promise.all(users.map((u) => burst(gw.proxyUrl + '/x', u, 40)))
  results.forEach((replies, i) => {
    t.equal(replies.filter((r) => r.status === 201).length, 10, `${users[i]}: 40 concurrent on a fresh key, exactly 10 allowed`)
  })

  const b = await burstScenario(gw.proxyUrl + '/', 'cluster-burst')
  for (const e of b.expectations) t.ok(e.ok, `burst: ${e.what} (expected ${e.expected}, got ${e.actual})`)
  t.same(b.outcomes.slice(10).map((o) => o.source), Array(5).fill('redis'), 'refusals come from the cluster, no Postgres round trip')

  // Write-backs are asynchronous and best effort: wait for them, and never more than one key a bucket.
  const buckets = users.length + 2
  let perNode: number[] = []
  await waitFor(async () => {
    perNode = await keysPerNode(cluster, 'rlc:{*') // the bucket keys (not the re-seed's marker)
    return perNode.reduce((a, n) => a + n, 0) >= buckets
  }, { timeoutMs: 5_000, what: 'write-backs' }).catch(() => {})
  const total = perNode.reduce((a, n) => a + n, 0)
  t.ok(total <= buckets && total >= buckets - 1, `one key per bucket (${total} keys for ${buckets} buckets; a write-back may be dropped under load)`)
  t.ok(perNode.filter((n) => n > 0).length >= 2, `buckets spread over the nodes (${perNode.join('/')})`)
})

t.test('a Redis Cluster not formed yet does not hold up start-up; the gateway uses it once it is', async (t) => {
  // ioredis's Cluster connect() stays pending while the nodes answer without a formed cluster.
  const cluster = await startUnformedCluster(t, 3)
  let guard: NodeJS.Timeout | undefined
  const gw = await Promise.race([
    startTestGateway(t, { redisUrl: cluster.url, redisPrefix: 'rlu:', config: SLOW }),
    new Promise<never>((_resolve, reject) => { guard = setTimeout(() => reject(new Error('start-up still waits for the cluster after 15 s')), 15_000) })
  ]).finally(() => clearTimeout(guard))
  const first = await send(gw.proxyUrl + '/x', { user: 'unformed' })
  t.equal(first.status, 201, 'requests are served meanwhile')
  t.equal(first.headers.get('x-data-source'), 'new-user', 'PostgreSQL decides them')
  t.match((await send(gw.controlUrl + '/readyz')).json(), { redis: 'down' }, 'readiness reports Redis down')
  await cluster.form()
  await waitFor(async () => (await send(gw.proxyUrl + '/x', { user: 'unformed' })).headers.get('x-data-source') === 'redis',
    { timeoutMs: 20_000, what: 'snapshots read from the cluster once it is formed' })
  t.match((await send(gw.controlUrl + '/readyz')).json(), { redis: 'up' }, 'then readiness reports Redis up')
})

t.test('Redis Cluster in write-behind mode: the keys keep their hash tags, 40 concurrent on a fresh key allow exactly 10', async (t) => {
  const cluster = await startRedisCluster(t, 3)
  const gw = await startTestGateway(t, { redisUrl: cluster.url, redisPrefix: 'rlw:', config: { limits: { ...SLOW.limits, consistency: 'write-behind' }, ...TWO_BUCKETS } })
  // Redis decides once the deciding client has the slot map; until then PostgreSQL decides (strictly).
  await waitFor(async () => (await send(gw.proxyUrl + '/x', { user: 'cluster-warm' })).headers.get('x-data-source') === 'redis',
    { timeoutMs: 20_000, what: 'Redis deciding on the cluster' })
  const users = Array.from({ length: 8 }, (_, i) => `cluster-wb-${i}`)
  const results = await Promise.all(users.map((u) => burst(gw.proxyUrl + '/x', u, 40)))
  results.forEach((replies, i) => {
    t.equal(replies.filter((r) => r.status === 201).length, 10, `${users[i]}: exactly 10 allowed`)
    t.ok(replies.every((r) => r.headers.get('x-data-source') !== 'postgres' || r.status === 201), `${users[i]}: the refusals came from Redis (a strict PostgreSQL refusal says postgres)`)
  })
  // Two buckets per request, in different slots: decided one by one (no single call can hold them).
  const both = await burst(gw.proxyUrl + '/both', 'cluster-both', 40)
  t.equal(both.filter((r) => r.status === 201).length, 5, 'a request of two write-behind buckets: exactly the smaller capacity allowed')
  const perNode = await keysPerNode(cluster, 'rlw:wb{*')
  t.equal(perNode.reduce((a, n) => a + n, 0), users.length + 3, `one write-behind key per bucket (${perNode.join('/')})`)
  t.ok(perNode.filter((n) => n > 0).length >= 2, 'spread over the nodes by their hash tags')
})

t.test('Redis Sentinel: the gateway asks the sentinel for the master', async (t) => {
  const sentinel = await startRedisSentinel(t)
  const gw = await startTestGateway(t, { redisUrl: sentinel.url, redisPrefix: 'rls:', config: { ...SLOW, ...TWO_BUCKETS } })
  const seed = await cacheVsDb(gw.proxyUrl + '/', 'sentinel-cache')
  t.same(seed.outcomes.map((o) => o.source), ['new-user', 'redis', 'redis'], 'snapshots are cached on the master')
  const replies = await burst(gw.proxyUrl + '/x', 'sentinel-fresh', 40)
  t.equal(replies.filter((r) => r.status === 201).length, 10, '40 concurrent on a fresh key, exactly 10 allowed')
  const both = await burst(gw.proxyUrl + '/both', 'sentinel-both', 40)
  t.equal(both.filter((r) => r.status === 201).length, 5, 'two write-behind buckets on one request, on the master in one call: exactly the smaller capacity')
})
