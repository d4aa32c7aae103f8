// Pure policy logic, no servers: path rules, normalisation, route/tier resolution, access
// lists, upstream choice, overrides, client addresses, and config errors naming the field.
import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { loadConfig } from '../src/config/load.ts'
import { compilePathRule, normalizePath, pathOf } from '../src/policy/path.ts'
import { PolicySet, upstreamUrl } from '../src/policy/policy-set.ts'
import { OverrideTable } from '../src/policy/overrides.ts'
import { clientAddress, trustList } from '../src/identity/client-address.ts'
import { addForwardedHeaders } from '../src/proxy/forwarded.ts'

const config = (overrides: Record<string, unknown>) => loadConfig({ env: {}, skipDefaultFile: true, overrides })
const set = (overrides: Record<string, unknown>) => new PolicySet(config(overrides), { defaultUpstream: 'http://127.0.0.1:1', generation: 1 })

t.test('path rules: prefixes on segment boundaries, * and ** patterns', async (t) => {
  const api = compilePathRule('/api')
  t.ok(api.test('/api') && api.test('/api/') && api.test('/api/x/y'))
  t.notOk(api.test('/apix'), 'a prefix stops at a segment boundary')
  t.ok(compilePathRule('/api/').test('/api'), 'a trailing slash does not matter')
  t.ok(compilePathRule('/').test('/anything'))
  const one = compilePathRule('/users/*/avatar')
  t.ok(one.test('/users/42/avatar'))
  t.notOk(one.test('/users/42/x/avatar'), '* is one segment')
  t.notOk(one.test('/users//avatar'), '* is never empty')
  const rest = compilePathRule('/files/**')
  t.ok(rest.test('/files') && rest.test('/files/a') && rest.test('/files/a/b/c'))
  t.notOk(rest.test('/filesx'))
  t.ok(compilePathRule('/v*/items').test('/v2/items'))
  t.ok(compilePathRule('/a.b/*').test('/a.b/c'))
  t.notOk(compilePathRule('/a.b/*').test('/axb/c'), 'regex characters are literal')
  t.throws(() => compilePathRule('api'), /start with/)
  t.throws(() => compilePathRule('/a/**/b'), /last segment/)
})

t.test('normalisation: a path spelled differently is matched as the same path', async (t) => {
  t.equal(normalizePath('/api/x'), '/api/x')
  t.equal(normalizePath('/%61pi/x'), '/api/x')
  t.equal(normalizePath('/api//x'), '/api/x')
  t.equal(normalizePath('/./api/./x'), '/api/x')
  t.equal(normalizePath('/other/../api/x'), '/api/x')
  t.equal(normalizePath('/api/a%2Fb'), '/api/a%2Fb', 'an encoded slash stays inside its segment')
  t.equal(normalizePath('/api/%zz'), '/api/%zz', 'a malformed escape is kept literally')
  t.equal(normalizePath('/caf%C3%A9/'), '/café/')
  t.equal(pathOf('/a/b?x=1'), '/a/b')
})

t.test('routes: first match wins; method filters; cost from the route or the policy', async (t) => {
  const s = set({
    limits: { capacity: 10, refillPerSecond: 1, cost: 1 },
    policies: { reads: { capacity: 100, refillPerSecond: 10 }, uploads: { capacity: 20, refillPerSecond: 1, cost: 4 } },
    routes: [
      { methods: ['post', 'PUT'], path: '/files/**', policy: 'uploads' },
      { methods: ['POST'], path: '/files/big', policy: 'uploads', cost: 10 },
      { path: '/api', policy: 'reads', cost: 2 }
    ]
  })
  t.match(s.resolve('POST', '/files/a', null), { policy: { name: 'uploads', capacity: 20 }, cost: 4, route: 0 })
  t.equal(s.resolve('POST', '/files/big', null).route, 0, 'the earlier rule wins')
  t.match(s.resolve('GET', '/files/a', null), { policy: { name: 'default' }, cost: 1, route: -1 }, 'method does not match')
  t.match(s.resolve('DELETE', '/api/x', null), { policy: { name: 'reads' }, cost: 2 })
  t.equal(s.resolve('GET', '/x', null).policy, s.defaultPolicy)
  t.equal(s.resolve('GET', '/api/x', null), s.resolve('GET', '/api/y', null), 'resolutions are built once, not per request')
  t.equal(s.maxCost.get('uploads'), 10)
  t.not(s.policies.get('reads')!.cacheName, s.policies.get('uploads')!.cacheName)
})

t.test('no policies configured: one "default" policy from limits, as before', async (t) => {
  const s = set({ limits: { capacity: 7, refillPerSecond: 2, cost: 3 } })
  t.same([...s.policies.keys()], ['default'])
  t.match(s.resolve('GET', '/anything', null), { policy: { name: 'default', capacity: 7, refillPerSecond: 2, shadow: false }, cost: 3 })
  t.equal(s.upstreamFor('/x').origin, 'http://127.0.0.1:1')
  t.notOk(s.isAllowed('a') || s.isDenied('a') || s.hasTiers)
})

t.test('tiers: static map, then claim, then header; unknown tiers fall back', async (t) => {
  const s = set({
    policies: { reads: { capacity: 100 }, 'gold-reads': { capacity: 1000 }, gold: { capacity: 50 } },
    routes: [{ path: '/api', policy: 'reads' }],
    tiers: { header: 'X-User-Tier', claim: 'tier', callers: { alice: 'gold', bob: 'nonexistent' }, sets: { gold: { default: 'gold', reads: 'gold-reads' } } }
  })
  t.equal(s.tierHeader, 'x-user-tier')
  t.equal(s.tierOf('alice', undefined, undefined), 'gold')
  t.equal(s.tierOf('alice', 'silver', 'silver'), 'gold', 'the static map wins')
  t.equal(s.tierOf('carol', 'gold', undefined), 'gold', 'from the header')
  t.equal(s.tierOf('carol', 'silver', 'gold'), 'gold', 'the claim wins over the header')
  t.equal(s.tierOf('carol', 'platinum', undefined), null, 'unknown tier: default')
  t.equal(s.tierOf('bob', 'gold', undefined), null, 'a static entry naming an unknown tier is the default tier')
  t.equal(s.resolve('GET', '/api/x', 'gold').policy.name, 'gold-reads')
  t.equal(s.resolve('GET', '/other', 'gold').policy.name, 'gold', 'the tier replaces the default too')
  t.equal(s.resolve('GET', '/api/x', null).policy.name, 'reads')
})

t.test('access lists and upstream prefixes', async (t) => {
  const s = set({
    access: { allow: ['monitor'], deny: ['mallory'] },
    upstreams: [
      { prefix: '/files/', url: 'http://127.0.0.1:2/store', stripPrefix: true },
      { prefix: '/search', url: 'https://127.0.0.1:3' }
    ]
  })
  t.ok(s.isAllowed('monitor'))
  t.ok(s.isDenied('mallory'))
  t.notOk(s.isDenied('monitor'))
  const files = s.upstreamFor('/files/a/b')
  t.match(files, { origin: 'http://127.0.0.1:2', basePath: '/store', stripPrefix: true })
  t.equal(upstreamUrl(files, '/files/a/b?x=1'), '/store/a/b?x=1')
  t.equal(upstreamUrl(files, '/files?x=1'), '/store/?x=1')
  t.equal(s.upstreamFor('/filesx').origin, 'http://127.0.0.1:1', 'prefixes stop at segment boundaries')
  const search = s.upstreamFor('/search/q')
  t.equal(search.origin, 'https://127.0.0.1:3')
  t.equal(upstreamUrl(search, '/search/q'), null, 'unchanged targets are not rebuilt')
})

t.test('overrides: applied per (policy, caller), memoised, rebuilt for a reloaded policy', async (t) => {
  const s = set({ policies: { reads: { capacity: 100, refillPerSecond: 10 } } })
  const reads = s.policies.get('reads')!
  const table = new OverrideTable([{ policy: 'reads', userId: 'vip', capacity: 500, refillPerSecond: null, updatedBy: 'ops', updatedAt: '' }])
  t.equal(table.apply(reads, 'someone'), reads)
  t.equal(table.apply(s.defaultPolicy, 'vip'), s.defaultPolicy, 'other policies untouched')
  const vip = table.apply(reads, 'vip')
  t.match(vip, { name: 'reads', capacity: 500, refillPerSecond: 10 })
  t.not(vip.cacheName, reads.cacheName, 'snapshots under other numbers are never read')
  t.equal(table.apply(reads, 'vip'), vip, 'memoised')
  const reloaded = set({ policies: { reads: { capacity: 100, refillPerSecond: 20 } } }).policies.get('reads')!
  t.match(table.apply(reloaded, 'vip'), { capacity: 500, refillPerSecond: 20 })
  t.equal(new OverrideTable().apply(reads, 'vip'), reads)
})

t.test('client address: X-Forwarded-For believed only from trusted proxies', async (t) => {
  const trusted = trustList(['10.0.0.0/8', '::1'])
  t.same(clientAddress('203.0.113.9', '1.2.3.4', trusted), { ok: true, address: '203.0.113.9' }, 'an untrusted peer is the client, whatever it claims')
  t.same(clientAddress('10.0.0.2', '198.51.100.7', trusted), { ok: true, address: '198.51.100.7' })
  t.same(clientAddress('10.0.0.2', '6.6.6.6, 198.51.100.7, 10.0.0.5', trusted), { ok: true, address: '198.51.100.7' }, 'spoofed entries left of the first untrusted hop are ignored')
  t.same(clientAddress('::ffff:10.0.0.2', '198.51.100.7', trusted), { ok: true, address: '198.51.100.7' }, 'IPv4-mapped peers')
  t.same(clientAddress('::1', ['10.1.1.1', '2001:db8::1'], trusted), { ok: true, address: '2001:db8::1' })
  t.same(clientAddress('10.0.0.2', '10.0.0.3', trusted), { ok: true, address: '10.0.0.3' }, 'all trusted: the leftmost')
  t.same(clientAddress('10.0.0.2', undefined, trusted), { ok: true, address: '10.0.0.2' })
  t.same(clientAddress('10.0.0.2', '1.2.3.4', null), { ok: true, address: '10.0.0.2' }, 'no trusted proxies: the header is ignored')
  t.match(clientAddress('10.0.0.2', 'not-an-ip', trusted), { ok: false })
})

t.test('X-Forwarded-* headers: appended, canonical addresses, claims kept only from trusted peers', async (t) => {
  const trusted = trustList(['10.0.0.0/8', 'fd00::/8'])
  const h1: Record<string, string | string[] | undefined> = { 'x-forwarded-for': ['198.51.100.1', '198.51.100.2'], 'x-forwarded-proto': 'https' }
  addForwardedHeaders(h1, '::ffff:10.1.2.3', 'http', 'api.example', trusted)
  t.same(h1, { 'x-forwarded-for': '198.51.100.1, 198.51.100.2, 10.1.2.3', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example' },
    'an IPv4 peer on a dual-stack socket is written as IPv4; a trusted peer keeps its scheme')
  const h2: Record<string, string | string[] | undefined> = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example' }
  addForwardedHeaders(h2, '2001:db8::1', 'http', undefined, trusted)
  t.same(h2, { 'x-forwarded-proto': 'http', 'x-forwarded-for': '2001:db8::1' }, 'an untrusted IPv6 peer: claims replaced, no Host to forward')
  const h3: Record<string, string | string[] | undefined> = {}
  addForwardedHeaders(h3, undefined, 'https', 'h', null)
  t.same(h3, { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'h' }, 'an unknown peer adds no address; the scheme is this hop\'s')
})

t.test('policy config errors name the field', async (t) => {
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ routes: [{ path: '/x', policy: 'nope' }] }, /routes\.0\.policy: unknown policy "nope"/],
    [{ routes: [{ path: 'x' }] }, /routes\.0\.path: must start with "\/"/],
    [{ routes: [{ path: '/x', methods: ['FETCH'] }] }, /routes\.0\.methods\.0/],
    [{ policies: { small: { capacity: 2 } }, routes: [{ path: '/x', policy: 'small', cost: 3 }] }, /routes\.0\.cost: cost 3 exceeds the capacity 2 of policy "small"/],
    [{ policies: { small: { capacity: 2, cost: 5 } } }, /policies\.small\.cost/],
    [{ policies: { 'bad name': {} } }, /policies\.bad name/],
    [{ policies: { big: { capacity: 5 }, tiny: { capacity: 1 } }, routes: [{ path: '/x', policy: 'big', cost: 3 }], tiers: { sets: { free: { big: 'tiny' } } } }, /routes\.0\.cost: .*"tiny"/],
    [{ tiers: { sets: { gold: { default: 'missing' } } } }, /tiers\.sets\.gold\.default: unknown policy "missing"/],
    [{ upstreams: [{ prefix: 'files', url: 'http://x' }] }, /upstreams\.0\.prefix/],
    [{ upstreams: [{ prefix: '/f', url: 'ftp://x' }] }, /upstreams\.0\.url/],
    [{ identity: { trustedProxies: ['10.0.0.0/33'] } }, /identity\.trustedProxies\.0/],
    [{ identity: { source: 'jwt' } }, /identity\.jwt: source "jwt" needs/],
    [{ identity: { source: 'jwt', jwt: { secret: 'short' } } }, /identity\.jwt\.secret: must be at least 32/],
    [{ identity: { jwt: { publicKey: 'not a key' } } }, /identity\.jwt\.publicKey: not a usable PEM/],
    [{ identity: { jwt: { secret: 'x'.repeat(32), algorithms: ['RS256'] } } }, /identity\.jwt\.algorithms: RS256 does not fit/],
    [{ access: { deny: [''] } }, /access\.deny\.0/]
  ]
  for (const [overrides, message] of bad) t.throws(() => config(overrides), { message }, JSON.stringify(overrides))

  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  t.throws(() => config({ identity: { jwt: { publicKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) } } }), /private key/)
  t.doesNotThrow(() => config({ identity: { source: 'jwt', jwt: { publicKey: publicKey.export({ type: 'spki', format: 'pem' }) } } }))
  t.equal(loadConfig({ env: { JWT_SECRET: 'y'.repeat(32), IDENTITY_SOURCE: 'jwt' }, skipDefaultFile: true }).identity.jwt?.secret, 'y'.repeat(32), 'JWT_SECRET and IDENTITY_SOURCE from the environment')
})

t.test('the documented example configuration loads and resolves as described', async (t) => {
  const s = new PolicySet(loadConfig({ env: { CONFIG_FILE: 'config/examples/policies.yaml' } }), { defaultUpstream: 'http://127.0.0.1:1', generation: 1 })
  t.match(s.resolve('POST', '/v1/files/a', null), { policy: { name: 'uploads' }, cost: 5 })
  t.match(s.resolve('POST', '/v1/files/bulk', null), { policy: { name: 'uploads' }, cost: 10 })
  t.match(s.resolve('GET', '/v1/users/42/avatar', null), { policy: { name: 'reads' }, cost: 2 })
  t.match(s.resolve('GET', '/v1/search', null), { policy: { name: 'search', shadow: true } })
  t.match(s.resolve('GET', '/v1/items', null), { policy: { name: 'reads' }, cost: 1 })
  t.match(s.resolve('GET', '/v1/items', s.tierOf('acme-batch', undefined, undefined)), { policy: { name: 'gold-reads' } })
  t.match(s.resolve('GET', '/elsewhere', 'gold'), { policy: { name: 'gold-default' } })
  t.match(s.resolve('DELETE', '/v1/items/3', null), { policy: { name: 'writes' } })
  t.match(s.upstreamFor('/v1/files/a'), { origin: 'http://127.0.0.1:1' }, 'every path goes to the one upstream: the example runs as it stands')
  t.ok(s.isAllowed('uptime-monitor') && s.isDenied('banned-client-17'))
})
