// A request naming its caller (or its tier) twice is refused with 400 problem+json naming the
// header, and never reaches the upstream or a bucket: Node would otherwise join the two values
// into a fresh id ("victim, r1") and every new second value would be a new bucket.
import t from 'tap'
import { SignJWT } from 'jose'
import { startTestGateway } from './helpers/gateway.ts'
import { rawStatus, send } from './helpers/http.ts'

const portOf = (url: string): number => Number(new URL(url).port)
const bodyOf = (text: string): Record<string, unknown> => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>
const head = (lines: string[]): string => ['GET /x HTTP/1.1', 'Host: gw', ...lines, 'Connection: close', '', ''].join('\r\n')

t.test('two x-user-id headers: 400 naming the header, not forwarded, no bucket, counted', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 2, refillPerSecond: 0.001 } } })
  const port = portOf(gw.proxyUrl)
  for (const second of ['r1', 'r2', 'r3']) {
    const r = await rawStatus(port, head(['x-user-id: victim', `X-User-Id: ${second}`]))
    t.equal(r.status, 400, `victim + ${second} is refused`)
    t.match(r.text, /content-type: application\/problem\+json/i)
    t.match(bodyOf(r.text), { status: 400, title: 'Bad Request', detail: /x-user-id header must be sent once/ })
  }
  t.equal(gw.upstream!.received.length, 0, 'nothing reached the upstream')
  t.equal((await gw.postgres.peek('default', 'victim, r1')).snapshot, null, 'no bucket for the joined id')
  const one = await rawStatus(port, head(['x-user-id: a, b']))
  t.equal(one.status, 201, 'one header whose value holds a comma is still one id')
  const metrics = await send(gw.controlUrl + '/metrics')
  t.match(metrics.body, /gateway_rejected_requests_total\{reason="duplicate-header"\} 3/)
})

t.test('two tier headers: 400 naming the tier header', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      identity: { trustedProxies: ['127.0.0.1'] },
      policies: { gold: { capacity: 5, refillPerSecond: 0.001 } },
      tiers: { header: 'x-user-tier', sets: { gold: { default: 'gold' } } }
    }
  })
  const r = await rawStatus(portOf(gw.proxyUrl), head(['x-user-id: ann', 'x-user-tier: free', 'x-user-tier: gold']))
  t.equal(r.status, 400)
  t.match(bodyOf(r.text), { detail: /x-user-tier header must be sent once/ })
  t.equal(gw.upstream!.received.length, 0)
  t.equal((await rawStatus(portOf(gw.proxyUrl), head(['x-user-id: ann', 'x-user-tier: gold']))).status, 201, 'one tier header is fine')
})

t.test('jwt identity: two Authorization headers get 400 (Node would keep only the first)', async (t) => {
  const secret = 'a-test-secret-that-is-long-enough-0123456789'
  const gw = await startTestGateway(t, { config: { identity: { source: 'jwt', jwt: { secret } } } })
  const token = async (sub: string): Promise<string> => await new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime('5m').sign(new TextEncoder().encode(secret))
  const port = portOf(gw.proxyUrl)
  const r = await rawStatus(port, head([`Authorization: Bearer ${await token('victim')}`, `Authorization: Bearer ${await token('me')}`]))
  t.equal(r.status, 400)
  t.match(bodyOf(r.text), { detail: /authorization header must be sent once/ })
  t.equal(gw.upstream!.received.length, 0)
  t.equal((await rawStatus(port, head([`Authorization: Bearer ${await token('me')}`]))).status, 201, 'one token is fine')
})
