/**
 * A real upstream HTTP server for tests. Echoes what it received as JSON, and misbehaves on
 * request: /status/<code>, /slow/<ms>, /reset (drops the connection mid-response),
 * /headers (answers with rate-limit headers of its own, which the gateway must replace),
 * /stall/<ms> (a first chunk at once, the end after a pause), /conn-close (closes its connection, with hop-by-hop headers the gateway must not pass on).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface Received {
  method: string
  url: string
  headers: IncomingHttpHeaders
  body: string
}

export interface TestUpstream {
  readonly url: string
  readonly port: number
  readonly received: Received[]
  /** Requests whose client went away before the upstream answered. */
  readonly aborted: string[]
  close: () => Promise<void>
}

export async function startUpstream (t?: { teardown: (fn: () => unknown) => void }): Promise<TestUpstream> {
  const received: Received[] = []
  const aborted: string[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const url = req.url ?? '/'
      received.push({ method: req.method ?? '', url, headers: req.headers, body })
      const path = url.split('?')[0]!
      let m: RegExpMatchArray | null
      if ((m = /^\/status\/(\d{3})$/.exec(path)) !== null) {
        res.writeHead(Number(m[1]), { 'content-type': 'text/plain', 'x-upstream': 'yes' })
        res.end(`status ${m[1]}`)
      } else if ((m = /^\/slow\/(\d+)$/.exec(path)) !== null) {
        const timer = setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('slow') }, Number(m[1]))
        res.on('close', () => { clearTimeout(timer); if (!res.writableEnded) aborted.push(url) })
      } else if (path === '/reset') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000000' })
        res.write('partial')
        setTimeout(() => req.socket.destroy(), 20)
      } else if ((m = /^\/stall\/(\d+)$/.exec(path)) !== null) {
        // The head and a first chunk at once, the rest after a pause: a stream that goes quiet.
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write('data: first\n\n')
        const timer = setTimeout(() => res.end('data: last\n\n'), Number(m[1]))
        res.on('close', () => clearTimeout(timer))
      } else if (path === '/conn-close') {
        // Hop-by-hop headers of this connection, one of them named in Connection.
        res.writeHead(200, { 'content-type': 'text/plain', connection: 'close, x-hop', 'x-hop': 'upstream-only', 'keep-alive': 'timeout=1' })
        res.end('closing')
      } else if (path === '/headers') {
        res.writeHead(200, {
          'content-type': 'text/plain',
          'x-data-source': 'upstream-lies',
          ratelimit: '"upstream";r=999;t=0',
          'ratelimit-policy': '"upstream";q=999;w=1',
          'x-ratelimit-limit': '999',
          'x-ratelimit-remaining': '999',
          'x-ratelimit-reset': '0'
        })
        res.end('ok')
      } else {
        const out = JSON.stringify({ method: req.method, url, headers: req.headers, body })
        res.writeHead(201, { 'content-type': 'application/json', 'x-upstream': 'yes', 'set-cookie': ['a=1', 'b=2'] })
        res.end(out)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const upstream: TestUpstream = {
    url: `http://127.0.0.1:${port}`,
    port,
    received,
    aborted,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
  t?.teardown(() => upstream.close())
  return upstream
}
