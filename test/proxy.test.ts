// Proxy fidelity: what the client sends reaches the upstream, what the upstream answers reaches
// the client, with the gateway's rate-limit headers added and upstream failures mapped.
import t from 'tap'
import { request } from 'node:http'
import { startTestGateway } from './helpers/gateway.ts'
import { rawStatus, send } from './helpers/http.ts'
import { rateLimitOf } from './helpers/ratelimit.ts'

t.test('method, path, query, body, status and headers pass through', async (t) => {
  const gw = await startTestGateway(t)
  for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) {
    const hasBody = !['GET', 'OPTIONS'].includes(method)
    const res = await send(`${gw.proxyUrl}/some/path/%C3%A9?q=1&q=2&x=a%20b`, {
      method,
      user: 'fidelity',
      headers: { 'x-custom': 'kept', 'content-type': 'application/json' },
      body: hasBody ? JSON.stringify({ method }) : undefined
    })
    t.equal(res.status, 201, `${method}: upstream status passed through`)
    t.equal(res.headers.get('x-upstream'), 'yes', `${method}: upstream header passed through`)
    t.equal(res.headers.get('set-cookie'), 'a=1, b=2', `${method}: repeated upstream headers kept`)
    const seen = gw.upstream!.received.at(-1)!
    t.equal(seen.method, method)
    t.equal(seen.url, '/some/path/%C3%A9?q=1&q=2&x=a%20b', `${method}: path and query byte for byte`)
    t.equal(seen.headers['x-custom'], 'kept')
    t.equal(seen.headers['x-user-id'], 'fidelity', 'the caller id reaches the upstream')
    t.equal(seen.body, hasBody ? JSON.stringify({ method }) : '', `${method}: body`)
    t.equal(res.headers.get('x-data-source') !== null, true, 'rate-limit headers added')
  }
})

t.test('the upstream learns the client address, scheme and host (X-Forwarded-*)', async (t) => {
  const gw = await startTestGateway(t)
  const host = new URL(gw.proxyUrl).host
  await send(`${gw.proxyUrl}/fwd`, { user: 'fwd' })
  let seen = gw.upstream!.received.at(-1)!.headers
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'the client address')
  t.equal(seen['x-forwarded-proto'], 'http')
  t.equal(seen['x-forwarded-host'], host, 'the Host the client used (the upstream request carries its own)')
  t.not(seen.host, host, 'while Host names the upstream')

  // A client that is not a trusted proxy: its X-Forwarded-For is kept and appended to (the
  // upstream decides how far to believe it), its scheme and host claims are replaced.
  const claims = { 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example' }
  await send(`${gw.proxyUrl}/fwd`, { user: 'fwd', headers: claims })
  seen = gw.upstream!.received.at(-1)!.headers
  t.equal(seen['x-forwarded-for'], '203.0.113.7, 127.0.0.1', 'appended to')
  t.equal(seen['x-forwarded-proto'], 'http', 'an untrusted scheme claim is replaced')
  t.equal(seen['x-forwarded-host'], host, 'an untrusted host claim is replaced')

  // From a trusted proxy, what it says about the original request is passed on.
  const behind = await startTestGateway(t, { config: { identity: { trustedProxies: ['127.0.0.1/32'] } } })
  await send(`${behind.proxyUrl}/fwd`, { user: 'fwd', headers: claims })
  seen = behind.upstream!.received.at(-1)!.headers
  t.equal(seen['x-forwarded-for'], '203.0.113.7, 127.0.0.1')
  t.equal(seen['x-forwarded-proto'], 'https', 'a trusted proxy\'s scheme is kept')
  t.equal(seen['x-forwarded-host'], 'evil.example', 'a trusted proxy\'s host is kept')

  const off = await startTestGateway(t, { config: { proxy: { forwardedHeaders: false } } })
  await send(`${off.proxyUrl}/fwd`, { user: 'fwd', headers: { 'x-forwarded-proto': 'https' } })
  seen = off.upstream!.received.at(-1)!.headers
  t.equal(seen['x-forwarded-for'], undefined, 'forwardedHeaders: false adds nothing')
  t.equal(seen['x-forwarded-proto'], 'https', 'and passes what the client sent untouched')
})

t.test('hop-by-hop request headers are not forwarded (Keep-Alive, Expect: 100-continue, Upgrade, ...)', async (t) => {
  const gw = await startTestGateway(t)
  const port = Number(new URL(gw.proxyUrl).port)
  // node:http, not fetch: these are headers fetch will not send.
  const post = async (headers: Record<string, string>, body: string): Promise<{ status: number, body: string }> =>
    await new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/hop', headers: { 'x-user-id': 'hop', 'content-type': 'text/plain', ...headers } }, (res) => {
        let text = ''
        res.setEncoding('utf8').on('data', (c: string) => { text += c }).on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
      })
      req.on('error', reject)
      if (headers.expect !== undefined) req.on('continue', () => req.end(body))
      else req.end(body)
    })
  const cases: Array<Record<string, string>> = [
    { 'keep-alive': 'timeout=5' },
    { expect: '100-continue' },
    { upgrade: 'h2c' },
    { te: 'trailers', trailer: 'x-checksum' },
    { 'proxy-authorization': 'Basic c2VjcmV0', 'proxy-connection': 'keep-alive' }
  ]
  for (const headers of cases) {
    const names = Object.keys(headers)
    const res = await post(headers, 'payload')
    t.equal(res.status, 201, `${names.join(', ')}: forwarded, not a 502`)
    const seen = gw.upstream!.received.at(-1)!
    t.equal(seen.body, 'payload', `${names.join(', ')}: the body arrived`)
    t.same(names.filter((n) => seen.headers[n] !== undefined), [], `${names.join(', ')}: not passed upstream`)
  }
  // As an HTTP/1.0-style client writes it (Node's own client above leaves Keep-Alive out).
  const raw = await rawStatus(port, 'GET /hop HTTP/1.1\r\nHost: gw\r\nx-user-id: hop\r\nKeep-Alive: timeout=5\r\nConnection: close\r\n\r\n')
  t.equal(raw.status, 201, 'a raw Keep-Alive header: forwarded, not a 502')
  t.equal(gw.upstream!.received.at(-1)!.headers['keep-alive'], undefined, 'and not passed upstream')
})

t.test('hop-by-hop response headers stay between gateway and upstream: an upstream closing its connection does not close the client\'s', async (t) => {
  const gw = await startTestGateway(t)
  const port = Number(new URL(gw.proxyUrl).port)
  const raw = await rawStatus(port, 'GET /conn-close HTTP/1.1\r\nHost: gw\r\nx-user-id: hop-res\r\n\r\n')
  t.equal(raw.status, 200)
  const head = raw.text.slice(0, raw.text.indexOf('\r\n\r\n')).toLowerCase()
  t.match(head, /\r\nconnection: keep-alive\r\n/, 'the client connection stays open')
  t.notMatch(head, /x-hop/, 'a header the upstream named in Connection is dropped')
  t.notMatch(head, /keep-alive: timeout=1\b/, 'the upstream\'s Keep-Alive is not the client\'s')
  t.match(head, /x-data-source: /, 'the rate-limit headers are there')
})

t.test('large bodies stream both ways unchanged', async (t) => {
  const gw = await startTestGateway(t)
  const big = 'x'.repeat(3 * 1024 * 1024)
  const res = await send(gw.proxyUrl + '/upload', { method: 'POST', user: 'big', body: big, headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.status, 201)
  t.equal(gw.upstream!.received.at(-1)!.body.length, big.length, 'upstream got every byte')
  t.equal(JSON.parse(res.body).body.length, big.length, 'client got every byte back')
})

t.test('upstream error statuses are passed through, not retried', async (t) => {
  const gw = await startTestGateway(t)
  for (const code of [400, 404, 500, 503]) {
    const before = gw.upstream!.received.length
    const res = await send(`${gw.proxyUrl}/status/${code}`, { user: 'statuses' })
    t.equal(res.status, code)
    t.equal(gw.upstream!.received.length - before, 1, `${code}: sent to the upstream exactly once`)
  }
})

t.test('rate-limit headers follow the draft and replace the upstream\'s', async (t) => {
  const gw = await startTestGateway(t)
  const res = await send(gw.proxyUrl + '/headers', { user: 'hdr', headers: { 'x-data-source': 'client-lies', ratelimit: 'nope' } })
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-data-source'), 'new-user')
  const rl = rateLimitOf(res.headers)
  t.same(rl.policy, [{ name: 'default', params: { q: 10, w: 10 } }], 'q and w: the time to refill an empty bucket')
  t.same(rl.limit, [{ name: 'default', params: { r: 9, t: 1 } }], 't: seconds until the next whole token (1/s)')
  t.equal(res.headers.get('x-ratelimit-limit'), '10')
  t.equal(res.headers.get('x-ratelimit-remaining'), '9')
  t.equal(res.headers.get('x-ratelimit-reset'), '1', 'legacy Reset: seconds until full')
  const seen = gw.upstream!.received.at(-1)!
  t.equal(seen.headers['x-data-source'], undefined, 'client-sent X-Data-Source is not forwarded')
  t.equal(seen.headers.ratelimit, undefined, 'client-sent RateLimit is not forwarded')
})

t.test('a blocked request is not forwarded and gets a problem+json 429', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 2, refillPerSecond: 0.5 } } })
  await send(gw.proxyUrl + '/a', { user: 'blk' })
  await send(gw.proxyUrl + '/a', { user: 'blk' })
  const before = gw.upstream!.received.length
  const res = await send(gw.proxyUrl + '/a', { user: 'blk' })
  t.equal(res.status, 429)
  t.equal(gw.upstream!.received.length, before, 'not forwarded')
  t.match(res.headers.get('content-type'), /^application\/problem\+json/)
  t.equal(res.headers.get('retry-after'), '2', 'whole seconds until one token at 0.5/s')
  const rl = rateLimitOf(res.headers)
  t.same(rl.policy, [{ name: 'default', params: { q: 2, w: 4 } }])
  t.same(rl.limit, [{ name: 'default', params: { r: 0, t: 2 } }], 'draft-11: t is when the cost can be paid, as Retry-After says')
  t.equal(res.headers.get('x-ratelimit-reset'), '4', 'legacy Reset keeps its meaning: seconds until full')
  const body = res.json()
  t.equal(body.type, 'https://iana.org/assignments/http-problem-types#quota-exceeded')
  t.equal(body.status, 429)
  t.same(body['violated-policies'], ['default'])
  t.match(body.detail, /Rate limit exceeded/)
})

t.test('upstream unreachable answers 502, too slow answers 504, both problem+json', async (t) => {
  const dead = await startTestGateway(t, { upstreamUrl: 'http://127.0.0.1:1' })
  const r502 = await send(dead.proxyUrl + '/x', { user: 'u502' })
  t.equal(r502.status, 502)
  t.match(r502.headers.get('content-type'), /^application\/problem\+json/)
  t.equal(r502.json().status, 502)
  t.equal(r502.headers.get('x-data-source'), 'new-user', 'the decision headers are still there')

  const slow = await startTestGateway(t, { config: { proxy: { upstreamTimeoutMs: 200 } } })
  const started = Date.now()
  const r504 = await send(slow.proxyUrl + '/slow/3000', { user: 'u504' })
  t.equal(r504.status, 504)
  t.ok(Date.now() - started < 2500, 'answered at the timeout, not when the upstream finished')
  t.match(r504.json().detail, /200 ms/)
  const metrics = await (await fetch(slow.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_upstream_errors_total\{kind="timeout"\} 1/)
})

t.test('draft-11 headers: t is the seconds until the next whole token, pk a keyed hash when configured', async (t) => {
  const secret = 'a-partition-key-secret-for-tests'
  const gw = await startTestGateway(t, { config: { limits: { capacity: 10, refillPerSecond: 0.25 }, proxy: { partitionKeySecret: secret } } })
  const first = await send(gw.proxyUrl + '/a', { user: 'pk-ann' })
  const rl = rateLimitOf(first.headers)
  t.same(rl.policy, [{ name: 'default', params: { q: 10, w: 40 } }], 'RateLimit-Policy carries no pk (it describes the policy)')
  t.equal(rl.limit[0]!.params.r, 9)
  t.equal(rl.limit[0]!.params.t, 4, 'one token at 0.25/s: 4 s')
  const pk = rl.limit[0]!.params.pk as Buffer
  t.ok(Buffer.isBuffer(pk), 'pk is an SF Byte Sequence')
  t.equal(pk.length, 16)
  const { createHmac } = await import('node:crypto')
  t.same(pk, createHmac('sha256', secret).update('default').update('\0').update('pk-ann').digest().subarray(0, 16), 'HMAC-SHA256 of policy and caller')
  t.notOk(first.headers.get('ratelimit')!.includes('pk-ann'), 'the caller id is not revealed')
  const second = await send(gw.proxyUrl + '/a', { user: 'pk-ann' })
  t.equal(rateLimitOf(second.headers).limit[0]!.params.t, 4, 'still 4 s to the next whole token')
  t.equal(second.headers.get('x-ratelimit-reset'), '8', 'legacy Reset: 2 tokens short of full at 0.25/s')
  const other = await send(gw.proxyUrl + '/a', { user: 'pk-ben' })
  t.notSame(rateLimitOf(other.headers).limit[0]!.params.pk, pk, 'another caller, another partition key')

  const plain = await startTestGateway(t)
  const res = await send(plain.proxyUrl + '/a', { user: 'pk-ann' })
  t.equal(rateLimitOf(res.headers).limit[0]!.params.pk, undefined, 'no pk by default')
})
