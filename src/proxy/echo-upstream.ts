/**
 * A tiny upstream for the zero-configuration first run: answers every request with a JSON
 * description of what it received, so rate limiting can be seen working at once.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface EchoUpstream { readonly url: string, close: () => Promise<void> }

export async function startEchoUpstream (host = '127.0.0.1', port = 0): Promise<EchoUpstream> {
  const server: Server = createServer((req, res) => {
    let size = 0
    req.on('data', (chunk: Buffer) => { size += chunk.length })
    req.on('end', () => {
      const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyBytes: size, servedBy: 'ratelimit-gateway built-in echo upstream' })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  })
  await new Promise<void>((resolve) => server.listen(port, host, resolve))
  const { port: bound } = server.address() as AddressInfo
  return {
    url: `http://${host}:${bound}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
}
