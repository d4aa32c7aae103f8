// The take-over fence (docs/design.md): when one gateway loses PostgreSQL and Redis takes a
// bucket over, another gateway may have read that bucket's snapshot just before and be waiting
// for PostgreSQL's allowance. Without the fence Redis decides from a state that misses that
// allowance and the two stores together admit one request too many; with it Redis decides only
// once the allowance has been charged to it.
//
// The interleaving is made exact, not hoped for: gateway B's PostgreSQL path stalls while its
// decision is in flight (seen in its metrics), gateway A's path is cut, A's request starts the
// take-over (seen in Redis), then B's path heals.
import t from 'tap'
import { Redis } from 'ioredis'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startStallingRelay, startTcpRelay } from './helpers/faults.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

type Tap = Parameters<typeof startTestGateway>[0] & Parameters<typeof createTestDatabase>[0]

const CAPACITY = 2
const RATE = 0.001 // no refill to speak of during the test: counts are exact

async function postgresDecides (controlUrl: string): Promise<number> {
  const text = await (await fetch(controlUrl + '/metrics')).text()
  return Number(/^gateway_store_operations_total\{store="postgres",operation="decide"\} (\S+)$/m.exec(text)?.[1] ?? 0)
}

async function race (t: Tap, fenceMs: number): Promise<{ first: number, b: number, a: number, allowed: number }> {
  const databaseUrl = await createTestDatabase(t)
  const db = new URL(databaseUrl)
  const stalling = await startStallingRelay(t, db.hostname, Number(db.port || 5432))
  const cuttable = await startTcpRelay(t, db.hostname, Number(db.port || 5432))
  const via = (port: number): string => { const u = new URL(databaseUrl); u.port = String(port); return u.toString() }
  const prefix = createRedisPrefix(t)
  const upstream = await startUpstream(t)
  const limits = { capacity: CAPACITY, refillPerSecond: RATE }
  const b = await startTestGateway(t, { databaseUrl: via(stalling.port), redisPrefix: prefix, upstreamUrl: upstream.url, config: { limits } })
  const a = await startTestGateway(t, {
    databaseUrl: via(cuttable.port), redisPrefix: prefix, upstreamUrl: upstream.url,
    config: { limits, postgres: { decisionTimeoutMs: 1000, connectTimeoutSeconds: 1 }, fallback: { takeoverFenceMs: fenceMs, probeIntervalMs: 200 } }
  })
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.disconnect())
  const user = `fence-${fenceMs}`

  const first = await send(b.proxyUrl + '/x', { user })
  // The bucket's key (its policy's cache name is the gateway's business): the only one of this caller.
  const key: string = await waitFor(async () => (await redis.keys(`${prefix}*:${user}}`))[0] ?? '', { timeoutMs: 10_000, what: 'the snapshot in Redis' })

  // B reads the snapshot (one token left) and asks PostgreSQL, whose path now stalls.
  const asked = await postgresDecides(b.controlUrl)
  stalling.stall()
  const second = send(b.proxyUrl + '/x', { user })
  await waitFor(async () => (await postgresDecides(b.controlUrl)) > asked, { timeoutMs: 10_000, what: "B's decision in flight to PostgreSQL" })

  // A loses PostgreSQL: Redis takes the bucket over.
  await cuttable.cut()
  const third = send(a.proxyUrl + '/x', { user })
  const owned = fenceMs > 0 ? '|t' : '|r'
  await waitFor(async () => (await redis.get(key))?.endsWith(owned) === true, { timeoutMs: 10_000, what: `Redis taking the bucket over (${owned})` })

  // B's allowance arrives, and reaches Redis.
  stalling.heal()
  const [bReply, aReply] = await Promise.all([second, third])
  const statuses = [first.status, bReply.status, aReply.status]
  return { first: first.status, b: bReply.status, a: aReply.status, allowed: statuses.filter((s) => s === 201).length }
}

t.test('with the fence, Redis waits for the allowance another gateway is committing: exactly the capacity', async (t) => {
  const { first, b, a, allowed } = await race(t, 3000)
  t.equal(first, 201, 'B: PostgreSQL allows the first request')
  t.equal(b, 201, 'B: PostgreSQL allows the second request (the last token)')
  t.equal(a, 429, 'A: Redis, deciding after the fence, sees that token spent')
  t.equal(allowed, CAPACITY, `${allowed} allowed of capacity ${CAPACITY}`)
})

t.test('without it (takeoverFenceMs 0), the same interleaving admits one request too many', async (t) => {
  const { first, b, a, allowed } = await race(t, 0)
  t.equal(first, 201, 'B: PostgreSQL allows the first request')
  t.equal(b, 201, 'B: PostgreSQL allows the second request')
  t.equal(a, 201, 'A: Redis decided at once, from the snapshot B had read')
  t.equal(allowed, CAPACITY + 1, 'the race the fence closes')
})
