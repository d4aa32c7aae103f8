// /v1/check errors as a client sees them: about the shape it sent, naming the bad field (and the
// item of a batch); 415 with a hint for a body that is not JSON; 405 for a known route asked
// with the wrong method; method and path route the check like a proxied request.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

const post = async (url: string, body: unknown, type = 'application/json') =>
  await send(url + '/v1/check', { method: 'POST', headers: { 'content-type': type }, body: typeof body === 'string' ? body : JSON.stringify(body) })

t.test('errors describe the shape sent', async (t) => {
  const gw = await startTestGateway(t)
  const single = await post(gw.controlUrl, { key: 'x', cost: 0 })
  t.equal(single.status, 400)
  const detail = single.json<{ detail: string }>().detail
  t.equal(detail, 'Invalid a single check {"key": …}: cost must be >= 1.')
  t.notMatch(detail, /checks|oneOf/, 'nothing about the batch shape')

  const batch = await post(gw.controlUrl, { checks: [{ key: 'a' }, { key: 'b' }, { key: 'c', cost: 'two' }] })
  t.equal(batch.status, 400)
  t.equal(batch.json<{ detail: string }>().detail, 'Invalid a batch {"checks": […]}: checks[2].cost must be integer.', 'names the index of the bad item')
  t.match((await post(gw.controlUrl, { checks: [{ key: 'a', nope: 1 }] })).json(), { detail: /checks\[0\] has an unknown property "nope"/ })
  t.match((await post(gw.controlUrl, { cost: 1 })).json(), { detail: /the body must have the property "key"/ })
  t.match((await post(gw.controlUrl, '[1]')).json(), { status: 400, detail: /must be a JSON object/ })
})

t.test('a body that is not JSON: 415 with a hint', async (t) => {
  const gw = await startTestGateway(t)
  const r = await post(gw.controlUrl, 'key=x', 'application/x-www-form-urlencoded')
  t.equal(r.status, 415)
  t.match(r.headers.get('content-type'), /^application\/problem\+json/)
  t.match(r.json(), { status: 415, title: 'Unsupported Media Type', detail: /Content-Type: application\/json/ })
})

t.test('a known route with the wrong method: 405 with Allow; an unknown one: 404', async (t) => {
  const gw = await startTestGateway(t, { config: { control: { adminToken: 'an-admin-token-0123456789' } } })
  const get = await send(gw.controlUrl + '/v1/check')
  t.equal(get.status, 405)
  t.equal(get.headers.get('allow'), 'POST')
  t.match(get.json(), { status: 405, title: 'Method Not Allowed', detail: 'GET is not served on /v1/check; it answers POST.' })
  const bucket = await send(gw.controlUrl + '/v1/buckets/some-key', { method: 'POST' })
  t.equal(bucket.status, 405)
  t.match(bucket.headers.get('allow'), /GET/)
  t.match(bucket.headers.get('allow'), /DELETE/)
  t.equal((await send(gw.controlUrl + '/healthz', { method: 'DELETE' })).status, 405)
  t.equal((await send(gw.controlUrl + '/nowhere')).status, 404)
})

t.test('method and path: the route rules pick the policy, as on the proxy', async (t) => {
  const gw = await startTestGateway(t, {
    config: { policies: { reads: { capacity: 3, refillPerSecond: 0.001 } }, routes: [{ methods: ['GET'], path: '/api', policy: 'reads' }] }
  })
  const r = await post(gw.controlUrl, { key: 'k', method: 'get', path: '/api/items' })
  t.equal(r.status, 200, r.body)
  t.match(r.json(), { allowed: true, policy: 'reads', limit: 3 })
  t.match((await post(gw.controlUrl, { key: 'k', path: '/other' })).json(), { policy: 'default' })
  t.equal((await post(gw.controlUrl, { key: 'k', path: 'no-slash' })).status, 400)
})
