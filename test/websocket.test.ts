// WebSocket upgrades through the gateway: limited like requests (one upgrade, one cost),
// refused upgrades never reach the upstream, accepted ones carry messages both ways with the
// client's headers, the request id and X-Forwarded-* in the upstream's handshake.
import t from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import { spawnGateway, startTestGateway } from './helpers/gateway.ts'
import { createRedisPrefix, createTestDatabase } from './helpers/stores.ts'
import { rawStatus } from './helpers/http.ts'

interface WsUpstream { url: string, handshakes: IncomingHttpHeaders[] }

async function startWsUpstream (t: { teardown: (fn: () => unknown) => void }): Promise<WsUpstream> {
  const handshakes: IncomingHttpHeaders[] = []
  const server = createServer((_req, res) => { res.writeHead(200).end('plain') })
  const wss = new WebSocketServer({ server })
  wss.on('connection', (socket, req) => {
    handshakes.push(req.headers)
    socket.on('message', (data) => socket.send(`echo:${data.toString()}`))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    wss.close()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, handshakes }
}

type Outcome = { opened: true, socket: WebSocket } | { opened: false, status: number, headers: IncomingHttpHeaders }

async function connect (url: string, headers: Record<string, string>): Promise<Outcome> {
  const socket = new WebSocket(url, { headers })
  return await new Promise((resolve, reject) => {
    socket.once('open', () => resolve({ opened: true, socket }))
    socket.once('unexpected-response', (_req, res) => { resolve({ opened: false, status: res.statusCode ?? 0, headers: res.headers }); res.resume() })
    socket.once('error', reject)
  })
}

async function roundTrip (socket: WebSocket, text: string): Promise<string> {
  const reply = once(socket, 'message')
  socket.send(text)
  const [data] = await reply
  return (data as Buffer).toString()
}

t.test('WebSocket upgrades are limited like requests and proxied both ways', async (t) => {
  const upstream = await startWsUpstream(t)
  const gw = await startTestGateway(t, { upstreamUrl: upstream.url, config: { limits: { capacity: 2, refillPerSecond: 0.01 } } })
  const wsUrl = gw.proxyUrl.replace('http:', 'ws:') + '/live?room=1'

  const first = await connect(wsUrl, { 'x-user-id': 'ws-user', 'x-request-id': 'ws-req-1', authorization: 'Bearer abc' })
  t.ok(first.opened, 'first upgrade accepted')
  if (!first.opened) return
  t.teardown(() => first.socket.terminate())
  t.equal(await roundTrip(first.socket, 'hello'), 'echo:hello', 'messages flow both ways')
  const seen = upstream.handshakes.at(-1)!
  t.equal(seen['x-user-id'], 'ws-user', 'the client\'s headers reach the upstream handshake')
  t.equal(seen.authorization, 'Bearer abc')
  t.equal(seen['x-request-id'], 'ws-req-1', 'with the request id')
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'and X-Forwarded-For')

  const second = await connect(wsUrl, { 'x-user-id': 'ws-user' })
  t.ok(second.opened, 'second upgrade accepted (capacity 2)')
  if (second.opened) second.socket.terminate()

  const third = await connect(wsUrl, { 'x-user-id': 'ws-user' })
  t.notOk(third.opened, 'third upgrade refused')
  if (!third.opened) {
    t.equal(third.status, 429, 'with 429')
    t.ok(third.headers['retry-after'] !== undefined, 'and Retry-After')
  }
  t.equal(upstream.handshakes.length, 2, 'the refused upgrade never reached the upstream')

  const anonymous = await connect(wsUrl, {})
  t.notOk(anonymous.opened)
  if (!anonymous.opened) t.equal(anonymous.status, 400, 'an upgrade without a caller id is refused with 400')

  t.equal(await roundTrip(first.socket, 'still there'), 'echo:still there', 'an open connection is not cut by later refusals')
})

t.test('websocket: false: an upgrade goes upstream as a plain request, no WebSocket is opened', async (t) => {
  const upstream = await startWsUpstream(t)
  const gw = await startTestGateway(t, { upstreamUrl: upstream.url, config: { proxy: { websocket: false } } })
  const socket = new WebSocket(gw.proxyUrl.replace('http:', 'ws:') + '/live', { headers: { 'x-user-id': 'ws-off' } })
  const [err] = await once(socket, 'error') as [Error]
  t.ok(err instanceof Error, `the upgrade fails (${err.message})`)
  t.equal(upstream.handshakes.length, 0, 'no WebSocket reached the upstream')
})

t.test('SIGTERM with a WebSocket open: the connection is closed and the gateway exits 0 at once', async (t) => {
  const upstream = await startWsUpstream(t)
  const gw = await spawnGateway(t, { DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url })
  const open = await connect(gw.proxyUrl.replace('http:', 'ws:') + '/live', { 'x-user-id': 'ws-shutdown' })
  t.ok(open.opened)
  if (!open.opened) return
  t.equal(await roundTrip(open.socket, 'before'), 'echo:before')
  const closed = once(open.socket, 'close')
  const started = Date.now()
  t.equal(await gw.stop('SIGTERM'), 0, 'exit code 0')
  await closed
  t.ok(Date.now() - started < 10_000, `not held until the grace period ends (${Date.now() - started} ms)`)
})

t.test('other upgrades (h2c) are served as plain requests, as Node does without WebSockets', async (t) => {
  const gw = await startTestGateway(t)
  const port = Number(new URL(gw.proxyUrl).port)
  // What `curl --http2` or Java's HttpClient sends on an http:// URL.
  const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n'
  const get = await rawStatus(port, `GET /plain?q=1 HTTP/1.1\r\nHost: gw\r\nx-user-id: h2c\r\n${h2c}\r\n`)
  t.equal(get.status, 201, 'answered by the upstream, in HTTP/1.1')
  const seen = gw.upstream!.received.at(-1)!
  t.equal(seen.url, '/plain?q=1')
  t.equal(seen.headers.upgrade, undefined, 'the Upgrade header is not passed on')
  t.match(get.text, /x-data-source: /i, 'limited like any request')
  const post = await rawStatus(port, `POST /plain HTTP/1.1\r\nHost: gw\r\nx-user-id: h2c\r\n${h2c}Content-Length: 3\r\n\r\nabc`)
  t.equal(post.status, 400, 'one with a body cannot be recovered: 400')
  t.match(post.text, /send it without the Upgrade header/)
})
