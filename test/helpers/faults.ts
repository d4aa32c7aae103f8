/**
 * Faults on servers the test owns: a private redis-server it can kill and restart, and a TCP
 * relay in front of the shared PostgreSQL that it can cut (a network partition: every
 * connection dropped and new ones refused) and restore. The shared servers are never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { Redis } from 'ioredis'
import { waitFor } from './http.ts'
import { freePort } from './private-stores.ts'

interface TapLike { teardown: (fn: () => unknown) => void }

export interface PrivateRedis {
  readonly url: string
  readonly port: number
  start: () => Promise<void>
  kill: () => Promise<void>
}

export async function startPrivateRedis (t: TapLike): Promise<PrivateRedis> {
  const port = await freePort()
  let child: ChildProcess | null = null
  const kill = async (): Promise<void> => {
    const c = child
    child = null
    if (c === null || c.exitCode !== null || c.signalCode !== null) return
    c.kill('SIGKILL')
    await once(c, 'exit')
  }
  const start = async (): Promise<void> => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
    await waitFor(async () => {
      const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
      probe.on('error', () => {})
      try {
        await probe.connect()
        return (await probe.ping()) === 'PONG'
      } catch {
        return false
      } finally {
        probe.disconnect()
      }
    }, { what: `redis-server on :${port}` })
  }
  t.teardown(kill)
  await start()
  return { url: `redis://127.0.0.1:${port}`, port, start, kill }
}

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
