/**
 * The benchmark's upstream: the cheapest HTTP/1.1 server Node offers, answering a small 200
 * to everything. Run as its own process so its CPU is not charged to the load generator.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

const body = Buffer.from('{"ok":true}\n')
const server = createServer((req, res) => {
  req.resume()
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
  res.end(body)
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ ready: true, port: (server.address() as AddressInfo).port }) + '\n')
})
process.on('SIGTERM', () => { server.closeAllConnections(); server.close(() => process.exit(0)) })
