/**
 * A network fault the test owns: a TCP relay in front of the shared PostgreSQL that it can cut
 * (a partition: every connection dropped and new ones refused) and restore. The shared server
 * itself is never touched. Private servers to kill or pause are in private-stores.ts.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { freePort } from './private-stores.ts'

interface TapLike { teardown: (fn: () => unknown) => void }

export interface TcpRelay {
  readonly port: number
  /** Drops every connection and refuses new ones. */
  cut: () => Promise<void>
  /** Accepts connections again, on the same port. */
  restore: () => Promise<void>
}

export async function startTcpRelay (t: TapLike, targetHost: string, targetPort: number): Promise<TcpRelay> {
  const port = await freePort()
  const sockets = new Set<Socket>()
  let server: Server | null = null
  const listen = async (): Promise<void> => {
    server = createServer((client) => {
      const upstream = createConnection(targetPort, targetHost)
      for (const s of [client, upstream]) {
        sockets.add(s)
        s.on('close', () => sockets.delete(s))
        s.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream).pipe(client)
    })
    await new Promise<void>((resolve) => server!.listen(port, '127.0.0.1', resolve))
  }
  const cut = async (): Promise<void> => {
    const s = server
    server = null
    for (const socket of sockets) socket.destroy()
    if (s !== null) await new Promise<void>((resolve) => s.close(() => resolve()))
  }
  await listen()
  t.teardown(cut)
  return { port, cut, restore: listen }
}

export interface StallingRelay {
  readonly port: number
  /** Connections stay open, nothing is forwarded either way; new connections are accepted and held. */
  stall: () => void
  /** Forwarding resumes on the connections still open, and held ones are connected. */
  heal: () => void
}

/**
 * A relay that can stop answering without closing anything: a blackholed path, a hung server.
 * What a client sent while stalled is never delivered if the client gives up on the connection
 * (the relay drops the pair), as with packets lost on a dead path.
 */
export async function startStallingRelay (t: TapLike, targetHost: string, targetPort: number): Promise<StallingRelay> {
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
  t.teardown(async () => {
    for (const p of pairs) { p.client.destroy(); p.upstream?.destroy() }
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
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
    }
  }
}
