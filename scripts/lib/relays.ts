/**
 * TCP relays in front of a store, for faults on one client's path to it without touching the
 * server: a relay that can be cut (every connection reset, new ones refused) and one that can
 * stall (connections stay open, nothing is forwarded). Tap-free: used by the tests
 * (test/helpers/faults.ts adds teardowns) and by the chaos suite when network namespaces are
 * not available (scripts/lib/netns.ts is the real partition).
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { freePort } from './private-stores.ts'

export interface TcpRelay {
  readonly port: number
  /** Drops every connection and refuses new ones (a partition whose peer answers with RST). */
  cut: () => Promise<void>
  /** Accepts connections again, on the same port. */
  restore: () => Promise<void>
  close: () => Promise<void>
}

export async function startTcpRelay (targetHost: string, targetPort: number): Promise<TcpRelay> {
  const port = await freePort()
  const sockets = new Set<Socket>()
  let server: Server | null = null
  const listen = async (): Promise<void> => {
    if (server !== null) return
    const s = createServer((client) => {
      const upstream = createConnection(targetPort, targetHost)
      for (const socket of [client, upstream]) {
        sockets.add(socket)
        socket.on('close', () => sockets.delete(socket))
        socket.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream).pipe(client)
    })
    server = s
    await new Promise<void>((resolve) => s.listen(port, '127.0.0.1', resolve))
  }
  const cut = async (): Promise<void> => {
    const s = server
    server = null
    for (const socket of sockets) socket.destroy()
    if (s !== null) await new Promise<void>((resolve) => s.close(() => resolve()))
  }
  await listen()
  return { port, cut, restore: listen, close: cut }
}

export interface StallingRelay {
  readonly port: number
  /** Connections stay open, nothing is forwarded either way; new connections are accepted and held. */
  stall: () => void
  /** Forwarding resumes on the connections still open, and held ones are connected. */
  heal: () => void
  close: () => Promise<void>
}

/**
 * A relay that can stop answering without closing anything: a blackholed path, a hung server.
 * What a client sent while stalled is never delivered if the client gives up on the connection
 * (the relay drops the pair), as with packets lost on a dead path.
 */
export async function startStallingRelay (targetHost: string, targetPort: number): Promise<StallingRelay> {
  const port = await freePort()
  let stalled = false
  const pairs = new Set<{ client: Socket, upstream: Socket | null }>()
  const attach = (pair: { client: Socket, upstream: Socket | null }): void => {
    const upstream = pair.upstream ?? createConnection(targetPort, targetHost)
    pair.upstream = upstream
    const drop = (): void => { pair.client.destroy(); upstream.destroy(); pairs.delete(pair) }
    upstream.once('close', drop).on('error', drop)
    pair.client.pipe(upstream).pipe(pair.client)
  }
  const server = createServer((client) => {
    const pair = { client, upstream: null as Socket | null }
    pairs.add(pair)
    client.once('close', () => { pair.upstream?.destroy(); pairs.delete(pair) }).on('error', () => client.destroy())
    if (stalled) client.pause()
    else attach(pair)
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  return {
    port,
    stall: () => {
      stalled = true
      for (const { client, upstream } of pairs) {
        if (upstream === null) continue
        client.unpipe(upstream)
        upstream.unpipe(client)
        client.pause()
        upstream.pause()
      }
    },
    heal: () => {
      stalled = false
      for (const pair of pairs) {
        if (pair.upstream === null) attach(pair)
        else { pair.client.pipe(pair.upstream).pipe(pair.client) }
      }
    },
    close: async () => {
      for (const p of pairs) { p.client.destroy(); p.upstream?.destroy() }
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
