// PostgreSQL stopped under load (a private cluster this test owns): Redis decides with exact
// counts, and when PostgreSQL returns the buckets Redis decided are handed back, so the rows
// match what was spent: none refunded, none charged twice.
import t from 'tap'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { send, until, waitFor } from './helpers/http.ts'
import { startPrivatePostgres } from './helpers/private-stores.ts'
import { metricSum } from './helpers/metrics.ts'
import { keysPerNode, startRedisCluster } from './helpers/redis-topologies.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'
import { Redis } from 'ioredis'
import { loadConfig } from '../src/config/load.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { StoreHealth } from '../src/stores/health.ts'
import { encodeMember } from '../src/stores/owned-member.ts'
import { RedisDecider } from '../src/stores/redis/redis-decider.ts'

const CAPACITY = 20
// Slow enough that refill during the test is a tenth of a token: counts must be exact.
const RATE = 0.01

interface Tally { allowed: number, blocked: number, other: number[], sources: Set<string> }

t.test('Postgres stopped during load: Redis decides exactly; after restart the rows match what was spent', async (t) => {
  const pg = await startPrivatePostgres(t)
  const prefix = createRedisPrefix(t)
  const upstream = await startUpstream(t)
  // Redis is healthy here: a roomy timeout keeps a starved CI machine from looking like a Redis
  // outage (which would rightly hand decisions to the in-process fail mode).
  const config = { limits: { capacity: CAPACITY, refillPerSecond: RATE }, fallback: { probeIntervalMs: 200, redisTimeoutMs: 3000 } }
  // Two gateways sharing the stores: the hand-back must be right whichever recovers first.
  const gateways = await Promise.all([0, 1].map(() => startTestGateway(t, { databaseUrl: pg.url, redisPrefix: prefix, upstreamUrl: upstream.url, config })))
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.disconnect())
  // Not in the load: only its readiness is asked, with the "deciding" contract.
  const watcher = await startTestGateway(t, { databaseUrl: pg.url, redisPrefix: prefix, upstreamUrl: upstream.url, config: { ...config, control: { readiness: 'deciding' } } })
  const readiness = async (gw: TestGateway): Promise<[number, unknown]> => {
    const res = await send(gw.controlUrl + '/readyz')
    return [res.status, res.json()]
  }
  t.same(await readiness(watcher), [200, { status: 'ready', postgres: 'up', redis: 'up', deciding: 'postgres' }], 'deciding readiness, PostgreSQL up')

  const tallies = new Map<string, Tally>()
  let turn = 0
  const hit = async (user: string): Promise<string> => {
    const gw = gateways[turn++ % 2]!
    const res = await send(gw.proxyUrl + '/x', { user })
    const tally = tallies.get(user) ?? { allowed: 0, blocked: 0, other: [], sources: new Set() }
    tallies.set(user, tally)
    if (res.status === 201) tally.allowed++
    else if (res.status === 429) tally.blocked++
    else tally.other.push(res.status)
    const source = res.headers.get('x-data-source') ?? 'none'
    tally.sources.add(source)
    return source
  }
  const many = (user: string, n: number): Promise<string[]> => Promise.all(Array.from({ length: n }, () => hit(user)))

  // A steady background load that spans the outage and the recovery: 4 keys at 8 requests/s
  // each, so each key runs out (20 tokens) about 2.5 s in, while PostgreSQL is down or returning.
  const steady = ['steady-1', 'steady-2', 'steady-3', 'steady-4']
  let stopSteady = false
  const background = (async () => {
    const inFlight: Array<Promise<unknown>> = []
    const start = performance.now()
    for (let i = 0; !stopSteady; i++) {
      await until(start + i * 125)
      for (const user of steady) inFlight.push(hit(user))
    }
    await Promise.all(inFlight)
  })()

  // Phase 1, PostgreSQL up.
  const partly = ['partly-1', 'partly-2', 'partly-3', 'partly-4', 'partly-5', 'partly-6']
  for (const user of partly) await many(user, 8)
  const spent = ['spent-1', 'spent-2', 'spent-3']
  for (const user of spent) await many(user, CAPACITY + 5)
  await until(performance.now() + 500)

  // Phase 2, PostgreSQL stopped while the steady load runs.
  await pg.stop()
  const phase2 = new Map<string, string[]>()
  for (const user of partly) phase2.set(user, await many(user, 15))
  for (const user of spent) phase2.set(user, await many(user, 3))
  const fresh = ['fresh-1', 'fresh-2', 'fresh-3']
  for (const user of fresh) phase2.set(user, await many(user, CAPACITY + 5))
  for (const [user, sources] of phase2) {
    t.same([...new Set(sources)], ['redis-fallback'], `${user}: decided by Redis while PostgreSQL is down`)
  }
  for (const user of partly) t.equal(tallies.get(user)!.allowed, CAPACITY, `${user}: 8 before + exactly 12 more while PostgreSQL is down`)
  for (const user of spent) t.equal(tallies.get(user)!.allowed, CAPACITY, `${user}: nothing more allowed while PostgreSQL is down`)
  for (const user of fresh) t.equal(tallies.get(user)!.allowed, CAPACITY, `${user}: exactly the capacity for a new caller`)
  t.ok(await redis.scard(prefix + 'redis-owned') > 0, 'the buckets Redis decided are recorded for hand-back')
  const owned = async (gw: TestGateway): Promise<number> => await metricSum(gw.metrics, 'gateway_redis_owned_buckets', {})
  await waitFor(async () => await owned(gateways[0]!) > 0, { what: 'gateway_redis_owned_buckets counting them while PostgreSQL is down' })
  t.same(await readiness(gateways[0]!), [503, { status: 'not ready', postgres: 'down', redis: 'up', deciding: 'redis-fallback' }],
    'default readiness: not ready while PostgreSQL is down')
  t.same(await readiness(watcher), [200, { status: 'ready', postgres: 'down', redis: 'up', deciding: 'redis-fallback' }],
    'readiness "deciding": still ready, Redis decides')
  await until(performance.now() + 1000)

  // Phase 3, PostgreSQL back: every gateway hands back and PostgreSQL decides again.
  await pg.start()
  const restarted = performance.now()
  await waitFor(async () => gateways.every((gw) => !gw.limiter.postgresDown && gw.limiter.mode === 'postgres') &&
    (await redis.scard(prefix + 'redis-owned')) === 0, { timeoutMs: 15_000, what: 'both gateways back on PostgreSQL, nothing left Redis-owned' })
  t.comment(`back on PostgreSQL ${Math.round(performance.now() - restarted)} ms after it restarted`)
  await waitFor(async () => (await Promise.all(gateways.map(owned))).every((n) => n === 0), { what: 'gateway_redis_owned_buckets back to 0 on both gateways' })
  // Let the steady keys run dry on PostgreSQL too, then stop the load.
  await waitFor(() => steady.every((u) => tallies.get(u)!.blocked >= 4), { timeoutMs: 15_000, what: 'steady keys exhausted' })
  stopSteady = true
  await background
  for (const user of partly) await many(user, 2)
  const after = await hit('after-recovery')
  t.equal(after, 'new-user', 'a new caller is created by PostgreSQL again')
  for (const user of [...partly, ...fresh]) {
    const last = await hit(user)
    t.ok(last === 'redis' || last === 'postgres', `${user}: decided by the PostgreSQL path again (${last})`)
  }

  // Exact counts, no failures.
  for (const [user, tally] of tallies) {
    t.same(tally.other, [], `${user}: every request answered 201 or 429`)
    if (user !== 'after-recovery') t.equal(tally.allowed, CAPACITY, `${user}: exactly ${CAPACITY} allowed in total`)
  }
  t.ok(steady.every((u) => tallies.get(u)!.sources.has('redis-fallback')), 'the steady load was decided by Redis during the outage')

  // The rows: tokens now = capacity - allowed + refill since (at most RATE x test duration).
  const rows = await pg.query<{ user_id: string, tokens: number }>(
    `SELECT user_id, least($1::float8, tokens + extract(epoch FROM clock_timestamp() - last_refill_time) * $2::float8) AS tokens FROM rate_limits`, [CAPACITY, RATE])
  const byUser = new Map(rows.map((r) => [r.user_id, r.tokens]))
  for (const [user, tally] of tallies) {
    const tokens = byUser.get(user)
    const expected = CAPACITY - tally.allowed
    t.ok(tokens !== undefined && tokens >= expected - 1e-6 && tokens <= expected + 0.2,
      `${user}: row holds ${tokens?.toFixed(3)} tokens, spent ${tally.allowed} (expected ${expected} + refill < 0.2)`)
  }
  const values = await Promise.all([...tallies.keys()].map((u) => redis.get(`${prefix}{default@${CAPACITY}/${RATE}:${u}}`)))
  t.ok(values.filter((v) => v !== null).length >= tallies.size - 1, 'the buckets are cached')
  t.notOk(values.some((v) => v !== null && /\|[rm]$/.test(v)), 'every Redis value is an ordinary cache snapshot again')

  // Logged once per transition, per gateway.
  for (const gw of gateways as TestGateway[]) {
    const transitions = gw.logs.filter((l) => l.level >= 40 && /PostgreSQL/.test(l.msg)).map((l) => `${l.msg} (${String((l.err as { message?: string } | undefined)?.message ?? '')})`)
    if (transitions.length !== 4) t.comment(`PostgreSQL transitions: ${transitions.join('; ')}`) // says why, when a count below is off
    t.equal(gw.logs.filter((l) => l.msg.startsWith('PostgreSQL unreachable: Redis decides')).length, 1, 'fallback logged once')
    t.equal(gw.logs.filter((l) => l.msg === 'PostgreSQL decides again').length, 1, 'recovery logged once')
  }
  const metrics = await (await fetch(gateways[0]!.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_fail_mode_events_total\{mode="redis-fallback"\} [1-9]/)
  t.match(metrics, /gateway_fail_mode_active\{mode="postgres"\} 1/)
})

t.test('on a Redis Cluster: Redis decides across slots while PostgreSQL is down, and hands back', async (t) => {
  const [pg, cluster] = await Promise.all([startPrivatePostgres(t), startRedisCluster(t, 3)])
  const config = { limits: { capacity: CAPACITY, refillPerSecond: RATE }, fallback: { probeIntervalMs: 200, redisTimeoutMs: 3000 } }
  const gw = await startTestGateway(t, { databaseUrl: pg.url, redisUrl: cluster.url, redisPrefix: 'rlc:', config })
  const users = Array.from({ length: 6 }, (_, i) => `cluster-${i}`)
  const allowed = new Map(users.map((u) => [u, 0]))
  const hit = async (user: string, n: number): Promise<string[]> => {
    const replies = await Promise.all(Array.from({ length: n }, () => send(gw.proxyUrl + '/x', { user })))
    allowed.set(user, allowed.get(user)! + replies.filter((r) => r.status === 201).length)
    t.same(replies.filter((r) => r.status !== 201 && r.status !== 429), [], `${user}: answered`)
    return replies.map((r) => r.headers.get('x-data-source') ?? '')
  }
  for (const user of users) await hit(user, 5)
  await pg.stop()
  for (const user of users) {
    t.same([...new Set(await hit(user, 25))], ['redis-fallback'], `${user}: decided by the cluster`)
    t.equal(allowed.get(user), CAPACITY, `${user}: exactly ${CAPACITY} in total`)
  }
  const perNode = await keysPerNode(cluster, 'rlc:*')
  t.ok(perNode.filter((n) => n > 0).length >= 2, `buckets on several nodes (${perNode.join('/')})`)
  await pg.start()
  await waitFor(() => !gw.limiter.postgresDown, { timeoutMs: 15_000, what: 'back on PostgreSQL' })
  for (const user of users) t.equal(await hit(user, 1).then(() => allowed.get(user)), CAPACITY, `${user}: nothing refunded`)
  const rows = await pg.query<{ user_id: string, tokens: number }>('SELECT user_id, tokens FROM rate_limits')
  for (const row of rows) t.ok(row.tokens < 0.2, `${row.user_id}: row handed back empty (${row.tokens.toFixed(3)})`)
  t.equal(rows.length, users.length)
})

t.test('started while PostgreSQL is down (requiredAtStart: false): Redis decides, then migrations run and the buckets are handed back', async (t) => {
  const pg = await startPrivatePostgres(t)
  await pg.stop() // a fresh cluster, never migrated, not answering
  const config = {
    limits: { capacity: 5, refillPerSecond: RATE },
    postgres: { requiredAtStart: false },
    control: { readiness: 'deciding' },
    fallback: { probeIntervalMs: 200, redisTimeoutMs: 3000 }
  }
  await t.rejects(startTestGateway(t, { databaseUrl: pg.url }), /ECONNREFUSED/, 'by default a gateway does not start without PostgreSQL')
  const gw = await startTestGateway(t, { databaseUrl: pg.url, config })
  const ready = await send(gw.controlUrl + '/readyz')
  t.same([ready.status, ready.json()], [200, { status: 'ready', postgres: 'down', redis: 'up', deciding: 'redis-fallback' }], 'ready: Redis decides')

  const first = await Promise.all(Array.from({ length: 7 }, () => send(gw.proxyUrl + '/x', { user: 'early' })))
  t.same(first.map((r) => r.status).sort(), [201, 201, 201, 201, 201, 429, 429], 'exactly the capacity allowed, decided atomically by Redis')
  t.same([...new Set(first.map((r) => r.headers.get('x-data-source')))], ['redis-fallback'])

  await pg.start()
  await waitFor(() => !gw.limiter.postgresDown && gw.limiter.mode === 'postgres', { timeoutMs: 15_000, what: 'PostgreSQL deciding' })
  t.ok(gw.logs.some((l) => l.msg === 'migrations applied'), 'migrations ran once PostgreSQL answered')
  const rows = await pg.query<{ tokens: number }>('SELECT tokens FROM rate_limits WHERE user_id = $1', ['early'])
  t.equal(rows.length, 1, 'the bucket Redis decided was handed back to PostgreSQL')
  t.ok(rows[0]!.tokens < 0.2, `with what was spent (${rows[0]?.tokens.toFixed(3)} tokens left)`)
  const after = await send(gw.proxyUrl + '/x', { user: 'early' })
  t.equal(after.status, 429, 'no refund after the hand-back')
  t.equal((await send(gw.proxyUrl + '/x', { user: 'late' })).headers.get('x-data-source'), 'new-user', 'PostgreSQL creates new callers again')
  t.equal(gw.logs.filter((l) => /does not answer at start-up/.test(l.msg)).length, 1, 'the degraded start is logged once')
})

t.test('a bucket taken over again between its hand-back and the SREM stays in the owned set (a later pass hands it back)', async (t) => {
  const prefix = createRedisPrefix(t)
  const config = loadConfig({ env: {}, overrides: { redis: { url: TEST_REDIS_URL, keyPrefix: prefix } } })
  const metrics = new Metrics()
  const decider = new RedisDecider(config.redis, 3000, new StoreHealth('redis', createLogger('silent'), metrics), metrics, 0)
  t.teardown(() => decider.close())
  decider.start()
  await waitFor(() => decider.available, { what: 'the decider connected' })
  const client = decider.client!
  const policy = { name: 'default', capacity: 10, refillPerSecond: 0.001 }
  const bucket = { policy: 'default', cacheName: 'default', userId: 'late-taker', capacity: 10, refillPerSecond: 0.001 }
  const member = encodeMember(policy, 'late-taker')
  await client.set(`${prefix}{default:late-taker}`, `4|${Date.now()}|m`)
  await client.sadd(decider.ownedSetKey, member)
  // Another gateway, PostgreSQL still down for it, decides the bucket right after it became a
  // snapshot and before the SREM: its SADD is a no-op, its DECIDE takes the bucket over.
  const srem = client.srem.bind(client) as (...args: unknown[]) => Promise<number>
  client.srem = (async (...args: unknown[]) => {
    t.equal((await decider.decide({ policy, userId: 'late-taker', cost: 1 }, Date.now(), false)).kind, 'decided', 'taken over again')
    return await srem(...args)
  }) as typeof client.srem
  await decider.handedBack([bucket], [{ tokens: 4, atMs: Date.now() }])
  t.match(await client.get(`${prefix}{default:late-taker}`), /\|r$/, 'Redis owns it again')
  t.equal(await client.sismember(decider.ownedSetKey, member), 1, 'and it is in the owned set, for the next pass')
})
