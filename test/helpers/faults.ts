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
