// Refunds through the real gateway (real PostgreSQL and Redis, a real upstream that fails on
// demand): `refund: [upstream-error, 5xx]` gives the tokens back when the upstream is
// unreachable or times out (502/504), or answers 5xx; never above capacity; counted.
import t from 'tap'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startPrivatePostgres } from './helpers/private-stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const TOKEN = 'refunds-admin-token-0123456789'

async function remaining (gw: TestGateway, key: string, policy: string): Promise<{ remaining: number, tokens: number }> {
  const res = await send(`${gw.controlUrl}/v1/buckets/${key}?policy=${policy}`, { headers: { authorization: `Bearer ${TOKEN}` } })
  return res.json() as { remaining: number, tokens: number }
}

async function refunds (gw: TestGateway, policy: string, reason: string, result = 'refunded'): Promise<number> {
  const text = (await send(gw.controlUrl + '/metrics')).body
  const m = new RegExp(`gateway_refunds_total\\{policy="${policy}",reason="${reason}",result="${result}"\\} (\\d+)`).exec(text)
  return m === null ? 0 : Number(m[1])
}

t.test('refund: [upstream-error, 5xx] gives back what 5xx, 502 and 504 answers spent; other policies keep the charge', async (t) => {
  const flaky = await startUpstream(t) // fails on demand: closed below, then every request to it is a 502
  const upstream = await startUpstream(t) // answers /status/<code> and /slow/<ms> on demand
  const gw = await startTestGateway(t, {
    upstreamUrl: upstream.url,
    config: {
      proxy: { upstreamTimeoutMs: 150 },
      policies: {
        forgiving: { capacity: 5, refillPerSecond: 0.001, refund: ['upstream-error', '5xx'] },
        errorsOnly: { capacity: 5, refillPerSecond: 0.001, refund: ['upstream-error'] },
        strict: { capacity: 5, refillPerSecond: 0.001 }
      },
      routes: [
        { path: '/forgiving/**', policy: 'forgiving' },
        { path: '/errors-only/**', policy: 'errorsOnly' },
        { path: '/strict/**', policy: 'strict' },
        { path: '/flaky/**', policy: 'forgiving' }
      ],
      upstreams: [
        { prefix: '/flaky', url: flaky.url, stripPrefix: true },
        ...['/forgiving', '/errors-only', '/strict'].map((prefix) => ({ prefix, url: upstream.url, stripPrefix: true }))
      ],
      control: { adminToken: TOKEN }
    }
  })
  // Upstream 500s: refunded by `forgiving`, charged by `errorsOnly` and `strict`.
  for (let i = 0; i < 3; i++) t.equal((await send(gw.proxyUrl + '/forgiving/status/500', { user: 'ref-ann' })).status, 500)
  await waitFor(async () => await refunds(gw, 'forgiving', '5xx') === 3, { what: 'three 5xx refunds' })
  t.equal((await remaining(gw, 'ref-ann', 'forgiving')).remaining, 5, 'every 5xx refunded: the bucket is full again')
  for (let i = 0; i < 2; i++) t.equal((await send(gw.proxyUrl + '/errors-only/status/503', { user: 'ref-ann' })).status, 503)
  for (let i = 0; i < 2; i++) t.equal((await send(gw.proxyUrl + '/strict/status/500', { user: 'ref-ann' })).status, 500)
  t.equal((await remaining(gw, 'ref-ann', 'errorsOnly')).remaining, 3, 'refund: [upstream-error] keeps the charge of a 5xx answer')
  t.equal((await remaining(gw, 'ref-ann', 'strict')).remaining, 3, 'no refund by default')

  // 504: the upstream is too slow.
  t.equal((await send(gw.proxyUrl + '/errors-only/slow/2000', { user: 'ref-ann' })).status, 504)
  await waitFor(async () => await refunds(gw, 'errorsOnly', 'upstream-error') === 1, { what: 'the 504 refund' })
  t.equal((await remaining(gw, 'ref-ann', 'errorsOnly')).remaining, 3, 'the timed-out request was given back')
  t.equal((await send(gw.proxyUrl + '/strict/slow/2000', { user: 'ref-ann' })).status, 504)
  t.equal((await remaining(gw, 'ref-ann', 'strict')).remaining, 2, 'strict: the timeout was charged')

  // 502: the upstream goes away.
  t.equal((await send(gw.proxyUrl + '/flaky/x', { user: 'ref-ben' })).status, 201, 'the flaky upstream answers while it is up')
  await flaky.close()
  for (let i = 0; i < 3; i++) t.equal((await send(gw.proxyUrl + '/flaky/x', { user: 'ref-ben' })).status, 502)
  await waitFor(async () => await refunds(gw, 'forgiving', 'upstream-error') === 3, { what: 'three 502 refunds' })
  t.equal((await remaining(gw, 'ref-ben', 'forgiving')).remaining, 4, 'only the request the upstream answered is charged')

  // Refused requests are never refunded: they spent nothing.
  for (let i = 0; i < 6; i++) await send(gw.proxyUrl + '/strict/x', { user: 'ref-cat' })
  t.equal(await refunds(gw, 'strict', '5xx') + await refunds(gw, 'strict', 'upstream-error'), 0)
})

t.test('a refund never raises a bucket above capacity, and several policies are refunded together', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      policies: {
        fast: { capacity: 3, refillPerSecond: 1000, refund: ['5xx'] },
        slow: { capacity: 3, refillPerSecond: 0.001, refund: ['5xx'] }
      },
      defaultPolicy: ['fast', 'slow'],
      control: { adminToken: TOKEN }
    }
  })
  for (let i = 0; i < 2; i++) t.equal((await send(gw.proxyUrl + '/status/502', { user: 'ref-dan' })).status, 502, 'an upstream 502 is a 5xx answer')
  await waitFor(async () => await refunds(gw, 'slow', '5xx') === 2 && await refunds(gw, 'fast', '5xx') === 2, { what: 'the refunds of both policies' })
  const fast = await remaining(gw, 'ref-dan', 'fast')
  t.equal(fast.tokens, 3, 'refilled to full before the refund landed: still exactly the capacity')
  t.equal((await remaining(gw, 'ref-dan', 'slow')).remaining, 3, 'the slow bucket got both tokens back')
})

t.test('while PostgreSQL is down the refund goes to Redis, which charged the request', async (t) => {
  const pg = await startPrivatePostgres(t)
  await pg.stop()
  const gw = await startTestGateway(t, {
    databaseUrl: pg.url,
    config: {
      policies: { forgiving: { capacity: 3, refillPerSecond: 0.001, refund: ['5xx'] } },
      defaultPolicy: 'forgiving',
      postgres: { requiredAtStart: false },
      fallback: { probeIntervalMs: 60_000, redisTimeoutMs: 3000 }
    }
  })
  const failed = await send(gw.proxyUrl + '/status/500', { user: 'ref-eve' })
  t.equal(failed.status, 500)
  t.equal(failed.headers.get('x-data-source'), 'redis-fallback', 'Redis charged it')
  await waitFor(async () => await refunds(gw, 'forgiving', '5xx') === 1, { what: 'the refund by Redis' })
  const next = await send(gw.proxyUrl + '/x', { user: 'ref-eve' })
  t.equal(next.headers.get('x-ratelimit-remaining'), '2', 'the refunded token was there for the next request (3 - 1)')
})
