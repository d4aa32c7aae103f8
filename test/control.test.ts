// The control port: direct checks, health, metrics, API docs; and its separation from the proxy port.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

const post = (url: string, body: unknown): Promise<Response> =>
  fetch(url + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) })

t.test('POST /v1/check spends tokens and answers the decision', async (t) => {
  const gw = await startTestGateway(t)
  const first = await (await post(gw.controlUrl, { key: 'svc-a' })).json()
  t.same(first, { allowed: true, limit: 10, remaining: 9, reset_after_ms: 1000, retry_after_ms: 0, source: 'new-user', policy: 'default' })
  const big = await (await post(gw.controlUrl, { key: 'svc-a', cost: 9 })).json()
  t.match(big, { allowed: true, remaining: 0, source: 'redis' })
  const refused = await (await post(gw.controlUrl, { key: 'svc-a', cost: 2 })).json() as { allowed: boolean, retry_after_ms: number, source: string }
  t.equal(refused.allowed, false)
  t.equal(refused.source, 'redis', 'refused from the cached snapshot')
  t.ok(refused.retry_after_ms > 1000 && refused.retry_after_ms <= 2000, `retry_after_ms ${refused.retry_after_ms} ≈ time for 2 tokens`)

  // The check endpoint and the proxy share buckets.
  const viaProxy = await send(gw.proxyUrl + '/x', { user: 'svc-a' })
  t.equal(viaProxy.status, 429, 'the proxy sees the same bucket')
})

t.test('batched checks: one decision per entry, in order, duplicates charged in arrival order', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 3 } } })
  const res = await post(gw.controlUrl, { checks: [{ key: 'b1' }, { key: 'b2', cost: 3 }, { key: 'b1', cost: 2 }, { key: 'b1' }, { key: 'b2' }] })
  t.equal(res.status, 200)
  const { results } = await res.json() as { results: Array<{ allowed: boolean, remaining: number }> }
  t.same(results.map((r) => r.allowed), [true, true, true, false, false])
  t.same(results.map((r) => r.remaining), [2, 0, 0, 0, 0])
})

t.test('bad check requests get 400 problem+json with a reason and spend nothing', async (t) => {
  const gw = await startTestGateway(t, { config: { control: { maxChecksPerRequest: 5 } } })
  const cases: Array<[string, unknown, RegExp]> = [
    ['malformed JSON', '{"key": ', /JSON/i],
    ['missing key', { cost: 1 }, /key/],
    ['empty key', { key: '' }, /key/],
    ['zero cost', { key: 'k', cost: 0 }, /cost/],
    ['negative cost', { key: 'k', cost: -1 }, /cost/],
    ['fractional cost', { key: 'k', cost: 1.5 }, /cost/],
    ['enormous cost', { key: 'k', cost: 1e12 }, /cost/],
    ['cost above capacity', { key: 'k', cost: 11 }, /capacity/],
    ['unknown policy', { key: 'k', policy: 'nope' }, /policy/],
    ['unknown field', { key: 'k', extra: 1 }, /additional|extra/],
    ['too many checks', { checks: Array.from({ length: 6 }, () => ({ key: 'k' })) }, /checks|6|5/],
    ['one bad entry in a batch', { checks: [{ key: 'k' }, { key: 'k', cost: 0 }] }, /cost/],
    ['control character in key', { key: 'a\u0000b' }, /control/]
  ]
  for (const [name, body, reason] of cases) {
    const res = await post(gw.controlUrl, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.match(res.headers.get('content-type'), /^application\/problem\+json/, `${name}: problem+json`)
    t.match((await res.json() as { detail: string }).detail, reason, `${name}: says why`)
  }
  const after = await (await post(gw.controlUrl, { key: 'k' })).json()
  t.match(after, { allowed: true, remaining: 9, source: 'new-user' }, 'no bad request touched the bucket')
})

t.test('health, readiness, metrics and docs', async (t) => {
  const gw = await startTestGateway(t)
  t.same(await (await fetch(gw.controlUrl + '/healthz')).json(), { status: 'ok' })
  const ready = await fetch(gw.controlUrl + '/readyz')
  t.equal(ready.status, 200)
  t.same(await ready.json(), { status: 'ready', postgres: 'up', redis: 'up', deciding: 'postgres' })

  await send(gw.proxyUrl + '/m', { user: 'metrics-user' })
  const metrics = await fetch(gw.controlUrl + '/metrics')
  t.match(metrics.headers.get('content-type'), /^text\/plain/)
  const text = await metrics.text()
  t.match(text, /gateway_decisions_total\{result="allowed",source="new-user",policy="default",decided_by="postgres"\} 1/)
  t.match(text, /gateway_cache_lookups_total\{result="miss"\} 1/)
  t.match(text, /process_resident_memory_bytes/)

  const spec = await (await fetch(gw.controlUrl + '/docs/json')).json() as { openapi: string, paths: Record<string, unknown> }
  t.match(spec.openapi, /^3\./)
  for (const path of ['/v1/check', '/v1/buckets/{key}', '/healthz', '/readyz', '/metrics']) t.ok(spec.paths[path], `OpenAPI documents ${path}`)
  const ui = await fetch(gw.controlUrl + '/docs/')
  t.equal(ui.status, 200)
  t.match(await ui.text(), /swagger/i)
})

t.test('readiness needs Postgres but only reports Redis', async (t) => {
  const gw = await startTestGateway(t, { redisUrl: 'redis://127.0.0.1:1' })
  const ready = await fetch(gw.controlUrl + '/readyz')
  t.equal(ready.status, 200)
  t.same(await ready.json(), { status: 'ready', postgres: 'up', redis: 'down', deciding: 'postgres' })
})

t.test('control routes are not reachable through the proxy port', async (t) => {
  const gw = await startTestGateway(t)
  for (const path of ['/metrics', '/healthz', '/v1/check', '/docs']) {
    const res = await send(gw.proxyUrl + path, { user: 'prober', method: path === '/v1/check' ? 'POST' : 'GET', body: path === '/v1/check' ? '{}' : undefined })
    t.equal(res.status, 201, `${path} went to the upstream`)
    t.equal(gw.upstream!.received.at(-1)!.url, path)
  }
})

t.test('admin routes: disabled without a token, then peek and reset with one', async (t) => {
  const off = await startTestGateway(t)
  t.equal((await fetch(off.controlUrl + '/v1/buckets/x')).status, 404, 'disabled without ADMIN_TOKEN')

  const token = 'test-admin-token-0123456789'
  const gw = await startTestGateway(t, { config: { control: { adminToken: token } } })
  const auth = { authorization: `Bearer ${token}` }
  t.equal((await fetch(gw.controlUrl + '/v1/buckets/x')).status, 401, 'missing token')
  t.equal((await fetch(gw.controlUrl + '/v1/buckets/x', { headers: { authorization: 'Bearer wrong' } })).status, 401, 'wrong token')

  for (let i = 0; i < 11; i++) await send(gw.proxyUrl + '/x', { user: 'resettable' })
  const peek = await (await fetch(gw.controlUrl + '/v1/buckets/resettable', { headers: auth })).json() as { exists: boolean, remaining: number }
  t.match(peek, { exists: true, remaining: 0 })
  const again = await (await fetch(gw.controlUrl + '/v1/buckets/resettable', { headers: auth })).json() as { remaining: number }
  t.equal(again.remaining, 0, 'peeking spends nothing')
  t.equal((await send(gw.proxyUrl + '/x', { user: 'resettable' })).status, 429, 'Redis holds an empty snapshot')
  const reset = await fetch(gw.controlUrl + '/v1/buckets/resettable', { method: 'DELETE', headers: auth })
  t.equal(reset.status, 200)
  const next = await send(gw.proxyUrl + '/x', { user: 'resettable' })
  t.equal(next.status, 201, 'the very next request passes')
  t.equal(next.headers.get('x-ratelimit-remaining'), '9')
})
