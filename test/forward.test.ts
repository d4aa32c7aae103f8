// The forwarder (src/proxy/forward.ts): which request targets go upstream, which client headers
// do not, and the same rules seen through the real gateway.
import t from 'tap'
import { isForwardable, upstreamRequestHeaders } from '../src/proxy/forward.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { rawStatus } from './helpers/http.ts'

t.test('isForwardable: paths go, dot-dot segments and non-paths do not', async (t) => {
  for (const ok of ['/', '/a/b', '/a/b?x=../y', '/file.v1.json', '/a..b/c', '/%41b', '/a/.../b', '/a/./b'])t.ok(isForwardable(ok), `${ok}: forwarded`)
  for (const bad of ['/a/../b', '/..', '/a/%2e%2e/b', '/a/%2E%2e', '/a\\..\\b', '/a/%5c..%5cb', '//evil.example/x', 'http://evil.example/x', '*', '', '/a/%zz'])t.notOk(isForwardable(bad), `${bad}: refused`)
})

t.test('upstreamRequestHeaders: Connection and the headers it names stay behind, the rest is copied', async (t) => {
  const incoming = { host: 'gw', connection: 'keep-alive, X-Secret-Hop', 'x-secret-hop': '1', 'transfer-encoding': 'chunked', 'x-keep': 'yes', 'x-dropped': '1' }
  const out = upstreamRequestHeaders(incoming, new Set(['connection', 'transfer-encoding', 'host', 'x-dropped']))
  t.same(out, { 'x-keep': 'yes' })
  t.same(upstreamRequestHeaders({ connection: 'close', 'x-a': '1' }, new Set(['connection'])), { 'x-a': '1' }, 'Connection: close names no header')
  t.equal(incoming.connection, 'keep-alive, X-Secret-Hop', 'the client request\'s own headers are not edited')
})

t.test('through the gateway: a dot-dot target is refused with 400 and never forwarded; a header named in Connection is not passed on', async (t) => {
  const gw = await startTestGateway(t)
  const port = Number(new URL(gw.proxyUrl).port)
  const before = gw.upstream!.received.length
  for (const target of ['/api/../admin', '/api/%2e%2e/admin']) {
    const res = await rawStatus(port, `GET ${target} HTTP/1.1\r\nHost: gw\r\nx-user-id: dots\r\nConnection: close\r\n\r\n`)
    t.equal(res.status, 400, `${target}: 400`)
    t.match(res.text, /content-type: application\/problem\+json/i, `${target}: as problem+json`)
  }
  t.equal(gw.upstream!.received.length, before, 'nothing reached the upstream')
  const ok = await rawStatus(port, 'GET /api/x?next=../y HTTP/1.1\r\nHost: gw\r\nx-user-id: dots\r\nx-hop: secret\r\nx-kept: 1\r\nConnection: close, x-hop\r\n\r\n')
  t.equal(ok.status, 201, 'dots in the query are only data: forwarded')
  const seen = gw.upstream!.received.at(-1)!
  t.equal(seen.url, '/api/x?next=../y', 'path and query byte for byte')
  t.equal(seen.headers['x-hop'], undefined, 'the header named in Connection stayed behind')
  t.equal(seen.headers['x-kept'], '1', 'the others went')
  t.equal(seen.headers.host, new URL(gw.upstream!.url).host, 'Host is the upstream\'s')
})
