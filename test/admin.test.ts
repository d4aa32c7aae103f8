// The admin API on the control port: token checks on every route, policy listing, per-caller
// overrides (honoured by the next decision, in every gateway sharing the stores), resets that
// take effect at once even when Redis holds an empty snapshot, and writes logged with who/what.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'

const TOKEN = 'admin-token-for-tests-0123456789'
const auth = { authorization: `Bearer ${TOKEN}` }
const POLICIES = {
  limits: { capacity: 3, refillPerSecond: 0.001 },
  policies: { uploads: { capacity: 4, refillPerSecond: 0.001, cost: 2 } },
  routes: [{ methods: ['POST'], path: '/upload', policy: 'uploads' }]
}

const admin = async (url: string, method: string, body?: unknown, headers: Record<string, string> = auth) => {
  const res = await fetch(url, { method, headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await res.text()
  return { status: res.status, headers: res.headers, body: text === '' ? null : JSON.parse(text) as Record<string, any> }
}

t.test('every admin route refuses a missing or wrong token, and is absent without ADMIN_TOKEN', async (t) => {
  const gw = await startTestGateway(t, { config: { control: { adminToken: TOKEN } } })
  const off = await startTestGateway(t)
  const routes: Array<[string, string, unknown?]> = [
    ['GET', '/v1/policies'],
    ['GET', '/v1/overrides'],
    ['PUT', '/v1/overrides/someone', { capacity: 5 }],
    ['DELETE', '/v1/overrides/someone'],
    ['GET', '/v1/buckets/someone'],
    ['DELETE', '/v1/buckets/someone']
  ]
  for (const [method, path, body] of routes) {
    for (const [name, headers] of [['missing', {}], ['wrong', { authorization: 'Bearer ' + 'x'.repeat(TOKEN.length) }], ['not bearer', { authorization: TOKEN }]] as const) {
      const res = await admin(gw.controlUrl + path, method, body, headers)
      t.equal(res.status, 401, `${method} ${path}, ${name} token: 401`)
      t.match(res.headers.get('content-type'), /problem\+json/)
    }
    t.equal((await admin(off.controlUrl + path, method, body)).status, 404, `${method} ${path}: disabled without a token`)
  }
  t.equal((await admin(gw.controlUrl + '/v1/overrides', 'GET')).status, 200, 'the right token is accepted')
  const wrongMethod = await admin(gw.controlUrl + '/v1/overrides/someone', 'GET')
  t.equal(wrongMethod.status, 405, 'a known route asked with a method it does not serve')
  t.match(wrongMethod.headers.get('allow'), /PUT.*DELETE|DELETE.*PUT/)
  t.equal(gw.logs.filter((l) => l.msg === 'admin request refused: missing or wrong token').length, 18, 'refusals are logged')
  t.notOk(JSON.stringify(gw.logs).includes(TOKEN), 'the token is never logged')
})

t.test('list policies; OpenAPI documents the admin routes', async (t) => {
  const gw = await startTestGateway(t, { config: { ...POLICIES, control: { adminToken: TOKEN } } })
  const res = await admin(gw.controlUrl + '/v1/policies', 'GET')
  t.equal(res.status, 200)
  t.match(res.body, {
    generation: 1,
    policies: [
      { name: 'default', capacity: 3, refill_per_second: 0.001, cost: 1, shadow: false },
      { name: 'uploads', capacity: 4, cost: 2, max_route_cost: 2 }
    ],
    routes: [{ methods: ['POST'], path: '/upload', policy: 'uploads' }],
    overrides: 0
  })
  const spec = await (await fetch(gw.controlUrl + '/docs/json')).json() as { paths: Record<string, Record<string, { security?: unknown, requestBody?: unknown }>> }
  for (const [path, method] of [['/v1/policies', 'get'], ['/v1/overrides', 'get'], ['/v1/overrides/{key}', 'put'], ['/v1/overrides/{key}', 'delete'], ['/v1/buckets/{key}', 'get'], ['/v1/buckets/{key}', 'delete']] as const) {
    t.ok(spec.paths[path]?.[method], `OpenAPI: ${method.toUpperCase()} ${path}`)
    t.same(spec.paths[path]?.[method]?.security, [{ admin: [] }], `${method} ${path} needs the bearer token`)
  }
  t.ok(spec.paths['/v1/overrides/{key}']!.put!.requestBody, 'the override body is documented')
})

t.test('overrides: a raise takes effect on the next request although Redis holds an empty snapshot', async (t) => {
  const gw = await startTestGateway(t, { config: { ...POLICIES, control: { adminToken: TOKEN } } })
  const upload = () => send(gw.proxyUrl + '/upload', { user: 'mia', method: 'POST', body: 'x' })
  t.same([(await upload()).status, (await upload()).status, (await upload()).status], [201, 201, 429])
  t.equal((await upload()).headers.get('x-data-source'), 'redis', 'Redis holds the empty snapshot')

  // A raise of capacity alone adds no tokens; a raise of the rate refills the bucket at once.
  const set = await admin(gw.controlUrl + '/v1/overrides/mia?policy=uploads', 'PUT', { capacity: 10, refill_per_second: 1000 }, { ...auth, 'x-admin-actor': 'ops@example' })
  t.equal(set.status, 200)
  t.match(set.body, { policy: 'uploads', key: 'mia', capacity: 10, refill_per_second: 1000, updated_by: 'ops@example' })
  const next = await upload()
  t.equal(next.status, 201, 'the very next request passes')
  t.equal(next.headers.get('ratelimit-policy'), '"uploads";q=10;w=1', 'headers show the override')
  t.ok(Number(next.headers.get('x-ratelimit-remaining')) >= 7, 'refilled under the new numbers, up to the new capacity')
  t.equal((await send(gw.proxyUrl + '/upload', { user: 'nat', method: 'POST', body: 'x' })).headers.get('x-ratelimit-limit'), '4', 'other callers keep the policy')

  const peek = await admin(gw.controlUrl + '/v1/buckets/mia?policy=uploads', 'GET')
  t.match(peek.body, { limit: 10, override: { capacity: 10, refill_per_second: 1000, updated_by: 'ops@example' } })
  const check = await (await fetch(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: 'mia', policy: 'uploads' }) })).json()
  t.match(check, { allowed: true, limit: 10 }, '/v1/check honours the override')

  t.match((await admin(gw.controlUrl + '/v1/overrides', 'GET')).body, { overrides: [{ policy: 'uploads', key: 'mia', capacity: 10 }] })
  const log = gw.logs.find((l) => l.admin_action === 'override.set')
  t.match(log, { actor: 'ops@example', key: 'mia', policy: 'uploads', capacity: 10, refill_per_second: 1000, previous: { capacity: 4, refill_per_second: 0.001 } }, 'the write is logged with who and what')

  const removed = await admin(gw.controlUrl + '/v1/overrides/mia?policy=uploads', 'DELETE')
  t.match(removed.body, { removed: true, override: { capacity: 10 } })
  const after = await upload()
  t.equal(after.headers.get('x-ratelimit-limit'), '4', 'back to the policy')
  t.match(gw.logs.find((l) => l.admin_action === 'override.remove'), { actor: 'admin', key: 'mia', removed: true })
  t.match((await admin(gw.controlUrl + '/v1/overrides/mia?policy=uploads', 'DELETE')).body, { removed: false, override: null })
})

t.test('override validation: 400 problem+json with a reason', async (t) => {
  const gw = await startTestGateway(t, { config: { ...POLICIES, control: { adminToken: TOKEN } } })
  const cases: Array<[string, unknown, RegExp]> = [
    ['/v1/overrides/x', {}, /fewer than 1|minProperties|must NOT have fewer/],
    ['/v1/overrides/x', { capacity: 0 }, /capacity/],
    ['/v1/overrides/x', { refill_per_second: -1 }, /refill_per_second/],
    ['/v1/overrides/x', { capacity: 'lots' }, /capacity/],
    ['/v1/overrides/x', { rate: 5 }, /additional/],
    ['/v1/overrides/x?policy=uploads', { capacity: 1 }, /below the cost 2/],
    ['/v1/overrides/x?policy=nope', { capacity: 5 }, /Unknown policy "nope"/]
  ]
  for (const [path, body, detail] of cases) {
    const res = await admin(gw.controlUrl + path, 'PUT', body)
    t.equal(res.status, 400, `${JSON.stringify(body)}: 400`)
    t.match(res.body?.detail, detail)
  }
  t.equal((await admin(gw.controlUrl + '/v1/overrides', 'GET')).body?.overrides.length, 0, 'nothing was stored')
})

t.test('reset of a named policy takes effect at once although Redis held an empty snapshot', async (t) => {
  const gw = await startTestGateway(t, { config: { ...POLICIES, control: { adminToken: TOKEN } } })
  const upload = () => send(gw.proxyUrl + '/upload', { user: 'ola', method: 'POST', body: 'x' })
  await upload()
  await upload()
  const blocked = await upload()
  t.equal(blocked.status, 429)
  t.equal(blocked.headers.get('x-data-source'), 'redis', 'denied from the cached empty snapshot')
  const uploads = gw.runtime.current.policies.policies.get('uploads')!
  const cached = await gw.redis.client!.get(gw.redis.key(uploads.cacheName, 'ola'))
  t.ok(cached !== null && Number(cached.split('|')[0]) < 0.01, `Redis holds the empty snapshot (${cached})`)
  const reset = await admin(gw.controlUrl + '/v1/buckets/ola?policy=uploads', 'DELETE', undefined, { ...auth, 'x-admin-actor': 'support' })
  t.match(reset.body, { key: 'ola', policy: 'uploads', reset: true, existed: true })
  const next = await upload()
  t.equal(next.status, 201, 'the very next request passes')
  t.equal(next.headers.get('x-ratelimit-remaining'), '2')
  t.match(gw.logs.find((l) => l.admin_action === 'reset'), { actor: 'support', key: 'ola', policy: 'uploads' })
})

t.test('an override set on one gateway is honoured by another sharing the stores', async (t) => {
  const a = await startTestGateway(t, { config: { ...POLICIES, control: { adminToken: TOKEN } } })
  const b = await startTestGateway(t, { config: POLICIES, databaseUrl: a.databaseUrl, redisPrefix: a.redisPrefix, upstreamUrl: a.upstream!.url })
  t.equal((await send(b.proxyUrl + '/x', { user: 'pia' })).headers.get('x-ratelimit-limit'), '3')
  await admin(a.controlUrl + '/v1/overrides/pia', 'PUT', { capacity: 50 })
  await waitFor(() => b.overrides.table.get('default', 'pia') !== undefined, { what: 'gateway B to hear of the override' })
  t.equal((await send(b.proxyUrl + '/x', { user: 'pia' })).headers.get('x-ratelimit-limit'), '50')
  await b.postgres.sql`DELETE FROM rate_limit_overrides` // by hand, as an operator in psql would
  await waitFor(() => a.overrides.table.size === 0, { what: 'gateway A to hear of the removal' })
})
