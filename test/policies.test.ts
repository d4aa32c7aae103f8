// Policies through the real gateway (real PostgreSQL, Redis and upstreams): per-route buckets
// and costs, tiers, allow and deny lists, shadow mode, several upstreams.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'
import { startUpstream } from './helpers/upstream.ts'

const statuses = async (url: string, count: number, init: Parameters<typeof send>[1]): Promise<number[]> => {
  const out: number[] = []
  for (let i = 0; i < count; i++) out.push((await send(url, init)).status)
  return out
}

t.test('routes pick the policy and the cost; buckets are per (policy, caller)', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      limits: { capacity: 10, refillPerSecond: 0.001 },
      policies: { reads: { capacity: 3, refillPerSecond: 0.001 }, uploads: { capacity: 10, refillPerSecond: 0.001, cost: 4 } },
      routes: [
        { methods: ['POST', 'PUT'], path: '/upload/**', policy: 'uploads' },
        { methods: ['GET'], path: '/api', policy: 'reads' }
      ]
    }
  })
  const reads = await statuses(gw.proxyUrl + '/api/items', 4, { user: 'ann' })
  t.same(reads, [201, 201, 201, 429], 'reads: capacity 3')
  const blocked = await send(gw.proxyUrl + '/api/items', { user: 'ann' })
  t.equal(blocked.headers.get('ratelimit-policy'), '"reads";q=3;w=3000')
  t.match(blocked.json(), { 'violated-policies': ['reads'] })

  const up = await send(gw.proxyUrl + '/upload/a', { user: 'ann', method: 'POST', body: 'x' })
  t.equal(up.status, 201, 'the upload bucket is independent of the read bucket')
  t.equal(up.headers.get('x-ratelimit-remaining'), '6', 'an upload costs 4 tokens')
  t.same(await statuses(gw.proxyUrl + '/upload/b', 2, { user: 'ann', method: 'PUT', body: 'x' }), [201, 429], '10 - 4 - 4 = 2 < 4')

  const other = await send(gw.proxyUrl + '/elsewhere', { user: 'ann' })
  t.equal(other.status, 201)
  t.equal(other.headers.get('ratelimit-policy'), '"default";q=10;w=10000', 'unmatched requests use the default policy')
  t.equal((await send(gw.proxyUrl + '/%61pi/items', { user: 'ann' })).status, 429, 'an encoded path is matched like the plain one')
  t.equal((await send(gw.proxyUrl + '/api/items', { user: 'ben' })).status, 201, 'other callers unaffected')
})

t.test('tiers from a header or a static map select other policies; unknown tiers fall back', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      identity: { trustedProxies: ['127.0.0.1'] }, // the test client is the proxy setting the header
      limits: { capacity: 2, refillPerSecond: 0.001 },
      policies: { gold: { capacity: 5, refillPerSecond: 0.001 } },
      tiers: { header: 'x-user-tier', callers: { carol: 'gold' }, sets: { gold: { default: 'gold' } } }
    }
  })
  const gold = await statuses(gw.proxyUrl + '/x', 6, { user: 'dave', headers: { 'x-user-tier': 'gold' } })
  t.same(gold, [201, 201, 201, 201, 201, 429], 'gold from the header: capacity 5')
  t.same(await statuses(gw.proxyUrl + '/x', 6, { user: 'carol' }), [201, 201, 201, 201, 201, 429], 'gold from the static map')
  t.same(await statuses(gw.proxyUrl + '/x', 3, { user: 'erin', headers: { 'x-user-tier': 'platinum' } }), [201, 201, 429], 'unknown tier: the default policy')
  t.same(await statuses(gw.proxyUrl + '/x', 3, { user: 'fred' }), [201, 201, 429], 'no tier: the default policy')
})

t.test('the tier header is believed only from identity.trustedProxies unless tiers.trustHeaderFrom is any', async (t) => {
  const tiers = { header: 'x-user-tier', sets: { gold: { default: 'gold' } } }
  const base = { limits: { capacity: 2, refillPerSecond: 0.001 }, policies: { gold: { capacity: 5, refillPerSecond: 0.001 } } }
  const untrusted = await startTestGateway(t, { config: { ...base, tiers, identity: { trustedProxies: ['10.0.0.0/8'] } } })
  t.same(await statuses(untrusted.proxyUrl + '/x', 3, { user: 'gus', headers: { 'x-user-tier': 'gold' } }), [201, 201, 429],
    'a client that is not a trusted proxy cannot name its own tier')
  const anyone = await startTestGateway(t, { config: { ...base, tiers: { ...tiers, trustHeaderFrom: 'any' } } })
  t.same(await statuses(anyone.proxyUrl + '/x', 6, { user: 'gus', headers: { 'x-user-tier': 'gold' } }), [201, 201, 201, 201, 201, 429],
    'trustHeaderFrom: any believes every client')
})

t.test('allow list is never limited; deny list always gets 403', async (t) => {
  const gw = await startTestGateway(t, {
    config: { limits: { capacity: 1, refillPerSecond: 0.001 }, access: { allow: ['monitor'], deny: ['mallory'] } }
  })
  const allowed = await statuses(gw.proxyUrl + '/x', 5, { user: 'monitor' })
  t.same(allowed, [201, 201, 201, 201, 201])
  const res = await send(gw.proxyUrl + '/x', { user: 'monitor' })
  t.equal(res.headers.get('x-data-source'), null, 'no bucket was touched')
  const before = gw.upstream!.received.length
  const denied = await send(gw.proxyUrl + '/x', { user: 'mallory' })
  t.equal(denied.status, 403)
  t.match(denied.headers.get('content-type'), /^application\/problem\+json/)
  t.match(denied.json(), { status: 403, detail: /not allowed/ })
  t.equal(gw.upstream!.received.length, before, 'a denied request is not forwarded')
  const metrics = await (await fetch(gw.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_allow_listed_requests_total 6/)
  t.match(metrics, /gateway_rejected_requests_total\{reason="deny-list"\} 1/)
})

t.test('shadow mode: decided, counted and logged, always forwarded, never 429', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      limits: { capacity: 2, refillPerSecond: 0.001 },
      policies: { trial: { capacity: 2, refillPerSecond: 0.001, shadow: true } },
      routes: [{ path: '/trial', policy: 'trial' }]
    }
  })
  const replies = await Promise.all(Array.from({ length: 8 }, () => send(gw.proxyUrl + '/trial/x', { user: 'gus' })))
  t.same(replies.map((r) => r.status), Array(8).fill(201), 'all forwarded, even concurrently')
  const marks = replies.map((r) => r.headers.get('x-ratelimit-shadow')).sort()
  t.same(marks, ['allowed', 'allowed', ...Array(6).fill('would-block')], 'exactly the requests over the limit are marked')
  t.equal(replies[0]!.headers.get('retry-after'), null)
  t.equal(replies[0]!.headers.get('ratelimit'), null, 'no enforcement headers for a limit that is not enforced')
  t.equal(gw.upstream!.received.length, 8)
  const sequential = await statuses(gw.proxyUrl + '/trial/y', 5, { user: 'gus' })
  t.same(sequential, Array(5).fill(201), 'never 429, also once Redis holds the empty snapshot')
  t.equal((await send(gw.proxyUrl + '/enforced', { user: 'gus' })).status, 201)
  t.equal((await send(gw.proxyUrl + '/enforced', { user: 'gus' })).status, 201)
  t.equal((await send(gw.proxyUrl + '/enforced', { user: 'gus' })).status, 429, 'other policies still enforce')

  const metrics = await (await fetch(gw.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_shadow_decisions_total\{policy="trial",result="would_block"\} 11/)
  t.match(metrics, /gateway_shadow_decisions_total\{policy="trial",result="allowed"\} 2/)
  t.equal(gw.logs.filter((l) => l.msg === 'shadow policy would block' && l.user_id === 'gus' && l.policy === 'trial').length, 11, 'each would-be block is logged')
})

t.test('shadow mode forwards even when the store cannot decide', async (t) => {
  // No store can decide: PostgreSQL goes away, Redis is off, and FAIL_MODE=closed refuses to
  // guess (with Redis, it would decide instead: docs/reliability.md).
  const gw = await startTestGateway(t, {
    config: { policies: { default: { shadow: true } }, postgres: { statementTimeoutMs: 500 }, redis: { enabled: false }, fallback: { mode: 'closed' } }
  })
  t.equal((await send(gw.proxyUrl + '/x', { user: 'hal' })).status, 201)
  await gw.postgres.close() // the store goes away for this gateway only (every connection it has)
  const res = await send(gw.proxyUrl + '/x', { user: 'hal' })
  t.equal(res.status, 201)
  t.equal(res.headers.get('x-ratelimit-shadow'), 'unavailable')
})

t.test('several upstreams by path prefix, with the limiter and headers on each', async (t) => {
  const files = await startUpstream(t)
  const search = await startUpstream(t)
  const gw = await startTestGateway(t, {
    config: {
      limits: { capacity: 2, refillPerSecond: 0.001 },
      upstreams: [
        { prefix: '/files', url: files.url + '/store', stripPrefix: true },
        { prefix: '/search', url: search.url }
      ]
    }
  })
  const f = await send(gw.proxyUrl + '/files/a/b?x=1', { user: 'ida', method: 'POST', body: 'payload' })
  t.equal(f.status, 201)
  t.match(files.received.at(-1), { method: 'POST', url: '/store/a/b?x=1', body: 'payload' }, 'prefix stripped, base path prepended')
  t.equal(f.headers.get('x-ratelimit-remaining'), '1', 'limited like any request')
  const s = await send(gw.proxyUrl + '/search/q?term=z', { user: 'ida' })
  t.equal(s.status, 201)
  t.equal(search.received.at(-1)!.url, '/search/q?term=z', 'prefix kept by default')
  const blocked = await send(gw.proxyUrl + '/other', { user: 'ida' })
  t.equal(blocked.status, 429, 'one bucket across upstreams (same policy)')
  t.equal(gw.upstream!.received.length, 0, 'nothing reached the default upstream')
  t.equal((await send(gw.proxyUrl + '/other', { user: 'jan' })).status, 201)
  t.equal(gw.upstream!.received.at(-1)!.url, '/other', 'unmatched prefixes go to the default upstream')
})

t.test('POST /v1/check with a method and path applies the proxy\'s routes, costs and access lists; key and cost alone keep their meaning', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      limits: { capacity: 10, refillPerSecond: 0.001 },
      policies: { uploads: { capacity: 10, refillPerSecond: 0.001, cost: 4 } },
      routes: [{ methods: ['POST'], path: '/upload/**', policy: 'uploads' }],
      access: { allow: ['robot'], deny: ['mallory'] }
    }
  })
  const check = async (body: unknown): Promise<Record<string, unknown>> =>
    await (await fetch(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).json() as Record<string, unknown>
  t.match(await check({ key: 'ann', method: 'POST', path: '/upload/a' }), { allowed: true, policy: 'uploads', remaining: 6 }, 'the route\'s policy and cost')
  // The same bucket as the proxy's: the proxy now sees what the check spent.
  const proxied = await send(gw.proxyUrl + '/upload/b', { user: 'ann', method: 'POST', body: 'x' })
  t.equal(proxied.headers.get('x-ratelimit-remaining'), '2', 'one bucket for the check and the proxy')
  t.match(await check({ key: 'ann', method: 'POST', path: '/upload/c' }), { allowed: false, policy: 'uploads', remaining: 2 })
  t.match(await check({ key: 'ann', method: 'GET', path: '/upload/c' }), { allowed: true, policy: 'default', remaining: 9 }, 'another method: another route')
  t.match(await check({ key: 'ann' }), { allowed: true, policy: 'default', remaining: 8 }, 'key alone: the default policy, as before')
  t.match(await check({ key: 'mallory', method: 'GET', path: '/' }), { allowed: false, source: 'deny-list' }, 'the deny list applies with a method')
  t.match(await check({ key: 'robot', method: 'GET', path: '/' }), { allowed: true, source: 'allow-list' }, 'the allow list applies with a method')
})

t.test('config/examples/policies.yaml runs as it stands: every route reaches the upstream, the tier header is not believed', async (t) => {
  const gw = await startTestGateway(t, { configFile: 'config/examples/policies.yaml' })
  for (const [method, path] of [['POST', '/v1/files/bulk'], ['PUT', '/v1/files/a'], ['GET', '/v1/users/1/avatar'], ['GET', '/v1/search'], ['GET', '/v1/items'], ['DELETE', '/v1/items/1'], ['GET', '/other']] as const) {
    const r = await send(gw.proxyUrl + path, { method, user: `example-${method}-${path}`, ...(method === 'GET' ? {} : { body: 'x' }) })
    t.equal(r.status, 201, `${method} ${path} reaches the upstream`)
  }
  const gold = await send(gw.proxyUrl + '/v1/items', { user: 'self-promoted', headers: { 'x-user-tier': 'gold' } })
  t.equal(gold.headers.get('ratelimit-policy'), '"reads";q=120;w=12', 'a client cannot make itself gold with the header')
})
