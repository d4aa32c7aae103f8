// The over-limit cache through the real gateway: refusals with no network round trip once a
// caller is known to be over its limit, never a refusal for a caller who can pay.
import t from 'tap'
import { loadConfig } from '../src/config/load.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send, until } from './helpers/http.ts'

const local = { localDenyCache: { enabled: true } }

async function hit (url: string, user: string): Promise<{ status: number, source: string, at: number, retryAfter: string | null }> {
  const res = await send(url, { user })
  return { status: res.status, source: res.headers.get('x-data-source') ?? '', at: performance.now(), retryAfter: res.headers.get('retry-after') }
}

t.test('configuration: off by default, LOCAL_DENY_CACHE and LOCAL_DENY_CACHE_SIZE turn it on', async (t) => {
  t.same(loadConfig({ env: {} }).localDenyCache, { enabled: false, maxEntries: 10_000 })
  t.same(loadConfig({ env: { LOCAL_DENY_CACHE: 'true', LOCAL_DENY_CACHE_SIZE: '50' } }).localDenyCache, { enabled: true, maxEntries: 50 })
  t.throws(() => loadConfig({ env: { LOCAL_DENY_CACHE_SIZE: '0' } }), /localDenyCache\.maxEntries.*LOCAL_DENY_CACHE_SIZE/)
})

t.test('a flooding caller is refused locally, and passes again as soon as a token is back', async (t) => {
  const gw = await startTestGateway(t, { config: local })
  const outcomes = []
  for (let i = 0; i < 13; i++) outcomes.push(await hit(gw.proxyUrl + '/f', 'flood'))
  t.same(outcomes.map((o) => o.status), [...Array(10).fill(201), 429, 429, 429])
  t.same(outcomes.map((o) => o.source), ['new-user', ...Array(9).fill('redis'), 'local', 'local', 'local'], 'the request that emptied the bucket taught the cache: no round trip for the refusals')
  t.equal(outcomes[12]!.retryAfter, '1', 'a local refusal carries Retry-After like any other')
  // One token is back a second after the last allowed request (the slack covers the clocks).
  await until(outcomes[9]!.at + 1_000 + 50)
  const next = await hit(gw.proxyUrl + '/f', 'flood')
  t.equal(next.status, 201, 'not refused once the bucket can pay')
  t.equal(next.source, 'redis', 'PostgreSQL decided it')
  t.equal((await hit(gw.proxyUrl + '/f', 'flood')).source, 'local', 'spent again: refused locally')
  const text = await gw.metrics.registry.metrics()
  t.match(text, /gateway_decisions_total\{result="blocked",source="local",policy="default",decided_by="gateway"\} 4/)
})

t.test('without Redis the cache learns from PostgreSQL\'s refusals', async (t) => {
  const gw = await startTestGateway(t, { config: local, redisUrl: 'redis://127.0.0.1:1' })
  const sources = []
  for (let i = 0; i < 12; i++) sources.push((await hit(gw.proxyUrl + '/n', 'no-redis')).source)
  t.same(sources, ['new-user', ...Array(9).fill('postgres'), 'local', 'local'])
})

t.test('an admin reset is honoured at once; the cache keeps at most its size', async (t) => {
  const token = 'test-admin-token-0123456789'
  const gw = await startTestGateway(t, { config: { localDenyCache: { enabled: true, maxEntries: 2 }, control: { adminToken: token } } })
  for (const user of ['a', 'b', 'c']) {
    for (let i = 0; i < 11; i++) await hit(gw.proxyUrl + '/r', user)
  }
  // a, b and c are each known to be over their limit; a, the least recent, made way for c.
  t.equal((await hit(gw.proxyUrl + '/r', 'b')).source, 'local')
  t.equal((await hit(gw.proxyUrl + '/r', 'c')).source, 'local')
  t.equal((await hit(gw.proxyUrl + '/r', 'a')).source, 'redis', 'evicted: Redis refused it')

  const reset = await fetch(gw.controlUrl + '/v1/buckets/c', { method: 'DELETE', headers: { authorization: `Bearer ${token}` } })
  t.equal(reset.status, 200)
  const after = await hit(gw.proxyUrl + '/r', 'c')
  t.equal(after.status, 201, 'the very next request after a reset passes')
})
