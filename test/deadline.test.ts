// The client-side deadline on a store round trip (src/stores/deadline.ts) when the event loop
// itself is late: an answer that arrived within the deadline while the loop was blocked (a long
// GC, a starved CPU) is an answer, not a dead store. Node runs expired timers before it reads
// the I/O that came in meanwhile, so a plain timer would send a healthy PostgreSQL into the
// fallback (Redis, or the fail mode), where the bound is weaker.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import type { Policy } from '../src/core/domain.ts'
import { StoreFailure } from '../src/core/errors.ts'
import { withDeadline } from '../src/stores/deadline.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { waitFor } from './helpers/http.ts'
import { freePort } from './helpers/private-stores.ts'
import { TEST_REDIS_URL } from './helpers/stores.ts'
import { metricSum } from './helpers/metrics.ts'

/** Keeps the event loop busy, as a long GC pause or a starved process would. */
interface Teardown { teardown: (fn: () => void) => void }

function block (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) { /* busy */ }
}

/** A raw connection to the test Redis: a store in another process, answering at once. */
async function redisSocket (t: Teardown): Promise<Socket> {
  const url = new URL(TEST_REDIS_URL)
  const client = connect(Number(url.port || 6379), url.hostname)
  await new Promise((resolve) => client.once('connect', resolve))
  t.teardown(() => { client.destroy() })
  return client
}

/** A server that accepts and never answers (a blackholed store), and a client on it. */
async function silentPeer (t: Teardown): Promise<Socket> {
  const server = createServer(() => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1')
  await new Promise((resolve) => client.once('connect', resolve))
  t.teardown(() => { client.destroy(); server.close() })
  return client
}

t.test('an answer that arrived while the event loop was blocked past the deadline wins', async (t) => {
  const client = await redisSocket(t)
  let expired = 0
  const answer = withDeadline(new Promise((resolve) => client.once('data', resolve)), 50, 'redis', 'ping', () => { expired++ })
  client.write('PING\r\n')
  block(250)
  t.equal(String(await answer), '+PONG\r\n', 'the answer is taken')
  t.equal(expired, 0, 'the expiry hook did not run (no connection is destroyed)')
})

t.test('a peer that never answers still expires at the deadline, once', async (t) => {
  const client = await silentPeer(t)
  let expired = 0
  const started = performance.now()
  const answer = withDeadline(new Promise((resolve) => client.once('data', resolve)), 50, 'redis', 'read', () => { expired++ })
  client.write('x')
  const err = await answer.then(() => null, (e: unknown) => e)
  t.ok(err instanceof StoreFailure && err.timedOut, 'rejected as a timed-out store failure')
  t.match(String((err as Error).message), /no answer within 50 ms/, 'the message names the deadline')
  t.ok(performance.now() - started >= 49, 'not before the deadline')
  t.equal(expired, 1, 'the expiry hook ran once')
})

t.test('a gateway whose event loop stalls past the decision deadline keeps PostgreSQL deciding', async (t) => {
  const gw = await startTestGateway(t, { config: { postgres: { decisionTimeoutMs: 300 } } })
  const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1, cacheName: 'default@10/1' }
  // Connections opened first (a new connection's set-up is not what this is about), and
  // PostgreSQL deciding (a loaded machine may take a warm-up past the deadline: it recovers).
  await waitFor(async () => (await gw.limiter.check(policy, 'warm-up', 1)).decidedBy === 'postgres' && !gw.limiter.postgresDown,
    { what: 'PostgreSQL deciding' })
  const decision = gw.limiter.check(policy, 'stalled-loop', 1)
  // The batch leaves on this turn's immediates (group commit) and postgres.js writes it on the
  // next turn's; the block starts right after that write, so PostgreSQL's answer waits in the
  // socket until the loop resumes.
  setImmediate(() => setImmediate(() => { block(800) }))
  const d = await decision
  t.match(d, { allowed: true, decidedBy: 'postgres' }, 'PostgreSQL decided the request')
  t.notOk(gw.limiter.postgresDown, 'PostgreSQL is not taken for down')
  t.equal(await metricSum(gw.metrics, 'gateway_store_deadline_expired_total', {}), 0, 'no deadline counted as expired')
})

t.test('with PostgreSQL down, a stall past the Redis deadline keeps Redis deciding, not the fail mode', async (t) => {
  // Nothing listens on the database port: the gateway starts without PostgreSQL and Redis decides.
  const gw = await startTestGateway(t, {
    databaseUrl: `postgres://postgres@127.0.0.1:${await freePort()}/none`,
    config: { postgres: { requiredAtStart: false, connectTimeoutSeconds: 1 }, fallback: { redisTimeoutMs: 300 } }
  })
  const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1, cacheName: 'default@10/1' }
  // The deciding client connects in the background: Redis decides once it has.
  await waitFor(async () => (await gw.limiter.check(policy, 'warm-up', 1)).source === 'redis-fallback', { what: 'Redis deciding while PostgreSQL is down' })
  const decision = gw.limiter.check(policy, 'stalled-loop', 1)
  // The script call leaves on this turn's immediates (ioredis's auto-pipelining); the block
  // starts on the next turn, so Redis's answer waits in the socket until the loop resumes.
  setImmediate(() => setImmediate(() => { block(800) }))
  t.match(await decision, { allowed: true, source: 'redis-fallback' }, 'Redis decided the request (not local-fallback)')
  t.equal(await metricSum(gw.metrics, 'gateway_store_deadline_expired_total', { store: 'redis' }), 0, 'no Redis deadline counted as expired')
})
