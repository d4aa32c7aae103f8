// Every method Node's parser knows reaches the upstream through the gateway, limited like any
// request (WebDAV and extension methods included); TRACE is refused with 405 problem+json
// unless proxy.allowTrace; route rules accept exactly these methods.
import t from 'tap'
import { METHODS } from 'node:http'
import { loadConfig } from '../src/config/load.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { rawStatus, send } from './helpers/http.ts'

const portOf = (url: string): number => Number(new URL(url).port)

t.test('WebDAV and extension methods are forwarded with their bodies and limited', async (t) => {
  const gw = await startTestGateway(t, {
    config: {
      limits: { capacity: 100, refillPerSecond: 0.001 },
      policies: { dav: { capacity: 2, refillPerSecond: 0.001 } },
      routes: [{ methods: ['propfind'], path: '/dav', policy: 'dav' }]
    }
  })
  for (const method of ['PROPFIND', 'PROPPATCH', 'MKCOL', 'COPY', 'MOVE', 'LOCK', 'UNLOCK', 'SEARCH', 'REPORT', 'MKCALENDAR', 'PURGE', 'LINK']) {
    const r = await send(gw.proxyUrl + '/files/a', { method, user: 'ann', headers: { 'content-type': 'application/xml' }, body: `<${method.toLowerCase()}/>` })
    t.equal(r.status, 201, `${method} reaches the upstream`)
    t.match(r.json(), { method, body: `<${method.toLowerCase()}/>` }, `${method} arrives with its body`)
    t.ok(r.headers.get('x-ratelimit-remaining') !== null, `${method} is limited`)
  }
  const noBody = await send(gw.proxyUrl + '/files/b', { method: 'MKCOL', user: 'ann' })
  t.equal(noBody.status, 201, 'without a body too')
  const dav = [0, 1, 2].map(async () => (await send(gw.proxyUrl + '/dav/x', { method: 'PROPFIND', user: 'bob', headers: { depth: '1' } })).status)
  t.same((await Promise.all(dav)).sort(), [201, 201, 429], 'a route rule for PROPFIND applies its policy')
  t.equal((await send(gw.proxyUrl + '/files/c', { method: 'PROPFIND' })).status, 400, 'still needs a caller id')
})

t.test('TRACE: 405 problem+json by default, forwarded with proxy.allowTrace', async (t) => {
  const gw = await startTestGateway(t)
  const trace = 'TRACE /x HTTP/1.1\r\nHost: gw\r\nx-user-id: ann\r\nConnection: close\r\n\r\n'
  const r = await rawStatus(portOf(gw.proxyUrl), trace)
  t.equal(r.status, 405)
  t.match(r.text, /content-type: application\/problem\+json/i)
  t.match(r.text, /allow: ACL, BIND, .*PROPFIND/i)
  t.notMatch(r.text, /allow: [^\r]*TRACE/i, 'Allow does not list TRACE')
  t.match(r.text, /"detail":"TRACE is not forwarded by this gateway."/)
  t.equal(gw.upstream!.received.length, 0)

  const allowing = await startTestGateway(t, { config: { proxy: { allowTrace: true } } })
  const ok = await rawStatus(portOf(allowing.proxyUrl), trace)
  t.equal(ok.status, 201, 'allowed: forwarded')
  t.equal(allowing.upstream!.received[0]?.method, 'TRACE')
})

t.test('route rules accept every proxied method and refuse others', async (t) => {
  const methods = METHODS.filter((m) => m !== 'CONNECT')
  t.doesNotThrow(() => loadConfig({ overrides: { routes: [{ methods, path: '/' }] } }), 'every proxied method')
  t.throws(() => loadConfig({ overrides: { routes: [{ methods: ['CONNECT'], path: '/' }] } }), /routes\.0\.methods\.0/)
  t.throws(() => loadConfig({ overrides: { routes: [{ methods: ['FETCH'], path: '/' }] } }), /routes\.0\.methods\.0/)
})
