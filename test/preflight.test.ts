// CORS preflights through the real gateway: forwarded without a caller id and without spending
// (limited per client address), limited like any request, or refused, per proxy.preflight.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

const preflight = { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }

t.test('forward (default): reaches the upstream with no caller id, spends nothing, limited per address', async (t) => {
  const gw = await startTestGateway(t, {
    config: { limits: { capacity: 1, refillPerSecond: 0.001 }, proxy: { preflightLimit: { capacity: 3, refillPerSecond: 0.001 } } }
  })
  const first = await send(gw.proxyUrl + '/api/items', { method: 'OPTIONS', headers: preflight })
  t.equal(first.status, 201, 'forwarded without x-user-id')
  t.match(first.json(), { method: 'OPTIONS', headers: { origin: 'https://app.example' } })
  t.equal(first.headers.get('x-ratelimit-remaining'), null, 'no bucket involved')
  const withId = await send(gw.proxyUrl + '/api/items', { method: 'OPTIONS', user: 'ann', headers: preflight })
  t.equal(withId.status, 201)
  t.equal((await send(gw.proxyUrl + '/api/items', { user: 'ann' })).status, 201, "the caller's only token was not spent by its preflight")

  await send(gw.proxyUrl + '/api/items', { method: 'OPTIONS', headers: preflight })
  const flood = await send(gw.proxyUrl + '/api/items', { method: 'OPTIONS', headers: preflight })
  t.equal(flood.status, 429, 'the fourth preflight from one address is refused')
  t.equal(flood.headers.get('content-type'), 'application/problem+json; charset=utf-8')
  t.ok(Number(flood.headers.get('retry-after')) >= 1)
  t.match(flood.json(), { status: 429, 'violated-policies': ['preflight'], detail: /CORS preflight/ })
  t.equal(gw.upstream!.received.filter((r) => r.method === 'OPTIONS').length, 3)

  const plain = await send(gw.proxyUrl + '/api/items', { method: 'OPTIONS' })
  t.equal(plain.status, 400, 'an OPTIONS that is not a preflight still needs a caller id')
  const metrics = await send(gw.controlUrl + '/metrics')
  t.match(metrics.body, /gateway_rejected_requests_total\{reason="preflight-limit"\} 1/)
})

t.test('limit: a preflight is a request like any other', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 1, refillPerSecond: 0.001 }, proxy: { preflight: 'limit' } } })
  t.equal((await send(gw.proxyUrl + '/x', { method: 'OPTIONS', headers: preflight })).status, 400, 'needs the caller id')
  const spent = await send(gw.proxyUrl + '/x', { method: 'OPTIONS', user: 'ann', headers: preflight })
  t.equal(spent.status, 201)
  t.equal(spent.headers.get('x-ratelimit-remaining'), '0', 'and spends')
  t.equal((await send(gw.proxyUrl + '/x', { user: 'ann' })).status, 429)
})

t.test('refuse: 403 problem+json, not forwarded', async (t) => {
  const gw = await startTestGateway(t, { config: { proxy: { preflight: 'refuse' } } })
  const r = await send(gw.proxyUrl + '/x', { method: 'OPTIONS', user: 'ann', headers: preflight })
  t.equal(r.status, 403)
  t.match(r.json(), { status: 403, detail: /preflight/ })
  t.equal(gw.upstream!.received.length, 0)
  t.equal((await send(gw.proxyUrl + '/x', { method: 'OPTIONS', user: 'ann' })).status, 201, 'a plain OPTIONS is still served')
})
