// Snapshot writes that did not reach Redis are written when it answers again
// (src/stores/unsent-snapshots.ts). Without that, a Redis back from an outage during which
// PostgreSQL decided holds a past state, and if PostgreSQL fails next, Redis takes the bucket
// over from it and admits again what PostgreSQL granted meanwhile.
import { Redis } from 'ioredis'
import t from 'tap'
import { UnsentSnapshots } from '../src/stores/unsent-snapshots.ts'
import { startTcpRelay } from './helpers/faults.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { metricSum } from './helpers/metrics.ts'
import { startPrivatePostgres } from './helpers/private-stores.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'

t.test('one entry per bucket: the newest snapshot as WRITE orders them, the charges summed', async (t) => {
  const unsent = new UnsentSnapshots(2)
  unsent.add('a', { tokens: 5, atMs: 100 }, 10, 1)
  unsent.add('a', { tokens: 4, atMs: 90 }, 10, 1) // older: kept out, its charge counted
  unsent.add('a', { tokens: 3, atMs: 100 }, 20, 2) // same stamp, fewer tokens: later
  unsent.add('a', { tokens: 3.5, atMs: 100 }, 30, 0) // same stamp, more tokens: earlier
  unsent.add('b', { tokens: 9, atMs: 50 }, 10, 1)
  unsent.add('c', { tokens: 1, atMs: 60 }, 10, 1) // a third bucket past max: not kept
  t.equal(unsent.size, 2, 'the third bucket is not kept')
  t.same(unsent.take(), [
    { key: 'a', snapshot: { tokens: 3, atMs: 100 }, ttlSeconds: 20, charge: 4 },
    { key: 'b', snapshot: { tokens: 9, atMs: 50 }, ttlSeconds: 10, charge: 1 }
  ])
  t.equal(unsent.size, 0, 'taken: none held')
  unsent.add('d', { tokens: 1, atMs: 1 }, 10, 1)
  unsent.forget('d')
  t.same(unsent.take(), [], 'a raised bucket is forgotten')
})

t.test('Redis cut off while PostgreSQL decides, then PostgreSQL down: Redis takes over from PostgreSQL\'s latest state', async (t) => {
  const pg = await startPrivatePostgres(t)
  const relay = await startTcpRelay(t, '127.0.0.1', Number(new URL(TEST_REDIS_URL).port || 6379))
  const prefix = createRedisPrefix(t)
  const gw = await startTestGateway(t, {
    databaseUrl: pg.url,
    redisUrl: `redis://127.0.0.1:${relay.port}`,
    redisPrefix: prefix,
    config: { limits: { capacity: 10, refillPerSecond: 0.001 }, fallback: { probeIntervalMs: 100, redisTimeoutMs: 3000 } }
  })
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.quit())
  const ask = async (): Promise<string> => {
    const r = await send(gw.proxyUrl + '/x', { user: 'kept' })
    return `${r.status} ${r.headers.get('x-data-source') ?? ''}`
  }
  /** The tokens of the caller's cached snapshot in Redis, read past the relay. */
  const cached = async (): Promise<number | null> => {
    const keys = (await redis.keys(prefix + '*')).filter((k) => k.includes(':kept}'))
    if (keys.length !== 1) return null
    const value = await redis.get(keys[0]!)
    return value === null ? null : Number(value.split('|')[0])
  }

  const first: string[] = []
  for (let i = 0; i < 3; i++) first.push(await ask())
  t.same(first.map((s) => s.slice(0, 3)), ['201', '201', '201'])
  await waitFor(async () => { const c = await cached(); return c !== null && c < 7.01 }, { timeoutMs: 5_000, what: 'the snapshot of three allowances' })

  await relay.cut()
  const during: string[] = []
  for (let i = 0; i < 4; i++) during.push(await ask())
  t.same(during, Array(4).fill('201 postgres'), 'PostgreSQL decides while Redis is cut off (no snapshot read)')
  t.ok((await cached())! > 6.9, 'Redis still holds the state before the cut')
  t.equal(await metricSum(gw.metrics, 'gateway_redis_unsent_snapshots', {}), 1, 'one bucket\'s write held')

  await relay.restore()
  // The four allowances' snapshot reaches Redis once it answers (the gateway reconnects on its own).
  await waitFor(async () => { const c = await cached(); return c !== null && c < 3.01 }, { timeoutMs: 15_000, what: 'Redis to hold the state PostgreSQL reached while it was cut off' })
  t.equal(await metricSum(gw.metrics, 'gateway_redis_unsent_snapshots', {}), 0, 'none held once written')
  // The decider reconnects on its own connection and backoff: until it has, the fail mode decides.
  await waitFor(() => gw.decider.available, { timeoutMs: 15_000, what: 'the Redis decider to reconnect' })

  await pg.stop()
  const after: string[] = []
  for (let i = 0; i < 6; i++) after.push(await ask())
  t.same(after, [...Array(3).fill('201 redis-fallback'), ...Array(3).fill('429 redis-fallback')],
    'Redis decides from PostgreSQL\'s latest state: three left of ten, not seven')
})
