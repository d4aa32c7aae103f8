// Identity sources through the real gateway: client address with trusted proxies, and verified
// JWT claims (HS256 secret, ES256 public key); invalid tokens get 401 problem+json.
import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { SignJWT } from 'jose'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

t.test('address: the peer, or the X-Forwarded-For client when the peer is a trusted proxy', async (t) => {
  const untrusting = await startTestGateway(t, { config: { identity: { source: 'address' }, limits: { capacity: 2, refillPerSecond: 0.001 } } })
  const a = await send(untrusting.proxyUrl + '/x', { headers: { 'x-forwarded-for': '198.51.100.1' } })
  t.equal(a.status, 201, 'no x-user-id needed')
  await send(untrusting.proxyUrl + '/x', { headers: { 'x-forwarded-for': '198.51.100.2' } })
  t.equal((await send(untrusting.proxyUrl + '/x', { headers: { 'x-forwarded-for': '198.51.100.3' } })).status, 429, 'a client cannot dodge its bucket by forging X-Forwarded-For')

  const trusting = await startTestGateway(t, { config: { identity: { source: 'address', trustedProxies: ['127.0.0.0/8'] }, limits: { capacity: 2, refillPerSecond: 0.001 } } })
  for (const client of ['198.51.100.1', '198.51.100.2']) {
    const replies = await Promise.all([1, 2, 3].map(() => send(trusting.proxyUrl + '/x', { headers: { 'x-forwarded-for': `6.6.6.6, ${client}` } })))
    t.same(replies.map((r) => r.status).sort(), [201, 201, 429], `${client} has its own bucket behind the trusted proxy`)
  }
  const peek = await trusting.postgres.peek('default', '198.51.100.1')
  t.ok(peek.snapshot !== null, 'the bucket is keyed by the client address')
  const bad = await send(trusting.proxyUrl + '/x', { headers: { 'x-forwarded-for': 'garbage' } })
  t.equal(bad.status, 400)
  t.match(bad.json(), { detail: /X-Forwarded-For/ })
})

t.test('jwt (HS256): the claim is the caller id; bad tokens get 401 and touch no bucket', async (t) => {
  const secret = 'a-test-secret-that-is-long-enough-0123456789'
  const key = new TextEncoder().encode(secret)
  const gw = await startTestGateway(t, {
    config: {
      identity: { source: 'jwt', jwt: { secret, issuer: 'https://issuer.test', audience: 'gateway' } },
      limits: { capacity: 2, refillPerSecond: 0.001 },
      policies: { gold: { capacity: 4, refillPerSecond: 0.001 } },
      tiers: { claim: 'tier', sets: { gold: { default: 'gold' } } }
    }
  })
  const sign = async (claims: Record<string, unknown>, options: { exp?: string, alg?: string, secretKey?: Uint8Array, iss?: string } = {}) =>
    await new SignJWT(claims).setProtectedHeader({ alg: options.alg ?? 'HS256' }).setIssuedAt().setIssuer(options.iss ?? 'https://issuer.test').setAudience('gateway')
      .setExpirationTime(options.exp ?? '5m').sign(options.secretKey ?? key)
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

  const token = await sign({ sub: 'kim' })
  const replies = []
  for (let i = 0; i < 3; i++) replies.push(await send(gw.proxyUrl + '/x', { headers: bearer(token) }))
  t.same(replies.map((r) => r.status), [201, 201, 429], 'limited by the sub claim')
  t.equal(gw.upstream!.received.at(-1)!.headers.authorization, `Bearer ${token}`, 'the token still reaches the upstream')
  t.ok((await gw.postgres.peek('default', 'kim')).snapshot !== null)

  const gold = await sign({ sub: 'lee', tier: 'gold' })
  const goldStatuses = []
  for (let i = 0; i < 5; i++) goldStatuses.push((await send(gw.proxyUrl + '/x', { headers: bearer(gold) })).status)
  t.same(goldStatuses, [201, 201, 201, 201, 429], 'the tier claim selects the gold policy')

  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['no token', {}, /Authorization: Bearer/],
    ['not a bearer token', { authorization: 'Basic Zm9vOmJhcg==' }, /Authorization: Bearer/],
    ['garbage', bearer('not.a.jwt'), /not valid/],
    ['wrong key', bearer(await sign({ sub: 'kim' }, { secretKey: new TextEncoder().encode('another-secret-another-secret-another') })), /signature/],
    ['expired', bearer(await sign({ sub: 'kim' }, { exp: '-1h' })), /expired/],
    ['wrong issuer', bearer(await sign({ sub: 'kim' }, { iss: 'https://evil.test' })), /"iss"/],
    ['no sub claim', bearer(await sign({ name: 'kim' })), /"sub" claim/],
    ['alg none', bearer(Buffer.from('{"alg":"none"}').toString('base64url') + '.' + Buffer.from('{"sub":"kim"}').toString('base64url') + '.'), /not valid/]
  ]
  const before = gw.upstream!.received.length
  for (const [name, headers, detail] of cases) {
    const res = await send(gw.proxyUrl + '/x', { headers })
    t.equal(res.status, 401, `${name}: 401`)
    t.match(res.headers.get('content-type'), /^application\/problem\+json/, `${name}: problem+json`)
    t.match(res.headers.get('www-authenticate'), /^Bearer/, `${name}: WWW-Authenticate`)
    t.match(res.json(), { status: 401, detail }, `${name}: says why`)
  }
  t.equal(gw.upstream!.received.length, before, 'nothing was forwarded')
})

t.test('jwt (ES256 public key) from config', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const gw = await startTestGateway(t, {
    config: { identity: { source: 'jwt', jwt: { publicKey: publicKey.export({ type: 'spki', format: 'pem' }) as string, claim: 'client_id' } } }
  })
  const token = await new SignJWT({ client_id: 'svc-7' }).setProtectedHeader({ alg: 'ES256' }).setExpirationTime('5m').sign(privateKey)
  const ok = await send(gw.proxyUrl + '/x', { headers: { authorization: `Bearer ${token}` } })
  t.equal(ok.status, 201)
  t.ok((await gw.postgres.peek('default', 'svc-7')).snapshot !== null, 'keyed by the configured claim')
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
  const forged = await new SignJWT({ client_id: 'svc-7' }).setProtectedHeader({ alg: 'ES256' }).setExpirationTime('5m').sign(other)
  t.equal((await send(gw.proxyUrl + '/x', { headers: { authorization: `Bearer ${forged}` } })).status, 401)
  const hs = await new SignJWT({ client_id: 'svc-7' }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('x'.repeat(32)))
  t.equal((await send(gw.proxyUrl + '/x', { headers: { authorization: `Bearer ${hs}` } })).status, 401, 'an algorithm the key does not fit is refused')
})
