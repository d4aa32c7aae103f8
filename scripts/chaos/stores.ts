/**
 * The chaos suite's private stores: a redis-server on a free port and a throwaway PostgreSQL
 * cluster (initdb/pg_ctl in a temp dir, as the `postgres` user when run as root), with the
 * faults the suite injects. Never the machine's shared servers. (Like test/helpers/private-stores.ts,
 * which the product build cannot import.)
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { chmodSync, chownSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'

const run = promisify(execFile)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

async function until (what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

export interface ChaosRedis {
  readonly port: number
  readonly url: string
  kill: () => Promise<void>
  start: () => Promise<void>
  /** CLIENT PAUSE ms ALL: every client gets no answer for `ms`. */
  pause: (ms: number) => Promise<void>
  close: () => Promise<void>
}

export async function startRedis (): Promise<ChaosRedis> {
  const port = await freePort()
  let child: ChildProcess | null = null
  const ping = async (): Promise<boolean> => {
    const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    c.on('error', () => {})
    try { await c.connect(); return (await c.ping()) === 'PONG' } finally { c.disconnect() }
  }
  const start = async (): Promise<void> => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' })
    await until(`redis-server on ${port}`, ping)
  }
  const kill = async (): Promise<void> => {
    const c = child
    if (c === null || c.exitCode !== null || c.signalCode !== null) return
    const exited = once(c, 'exit')
    c.kill('SIGKILL')
    await exited
    child = null
  }
  await start()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    start,
    pause: async (ms) => {
      const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null })
      c.on('error', () => {})
      await c.connect()
      await c.call('CLIENT', 'PAUSE', String(ms), 'ALL')
      c.disconnect()
    },
    close: kill
  }
}

export interface ChaosPostgres {
  readonly port: number
  readonly url: string
  /** pg_ctl stop -m immediate: no shutdown checkpoint, connections cut at once. */
  stopImmediate: () => Promise<void>
  start: () => Promise<void>
  /** SIGSTOP the postmaster and every backend (SIGCONT with `resume`). */
  stall: () => Promise<number[]>
  resume: (pids: number[]) => void
  close: () => Promise<void>
}

function asPostgresUser (cmd: string, args: string[]): [string, string[]] {
  if (process.getuid?.() === 0) return ['runuser', ['-u', 'postgres', '--', cmd, ...args]]
  return [cmd, args]
}

function childrenOf (pid: number): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(entry))
    } catch { /* gone */ }
  }
  return out
}

export async function startPostgres (): Promise<ChaosPostgres> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-chaos-pg-'))
  const data = join(dir, 'data')
  if (process.getuid?.() === 0) {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])])
    chownSync(dir, Number(uid.stdout), Number(gid.stdout))
  }
  chmodSync(dir, 0o700)
  const port = await freePort()
  await run(...asPostgresUser('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale', 'C']))
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100`
  const start = async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', '-t', '30', 'start']))
  }
  const stopImmediate = async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop']))
  }
  const postmaster = (): number => Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0])
  await start()
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stopImmediate,
    start,
    stall: async () => {
      const pm = postmaster()
      const pids = [pm, ...childrenOf(pm)]
      for (const pid of pids) { try { process.kill(pid, 'SIGSTOP') } catch { /* gone */ } }
      return pids
    },
    resume: (pids) => { for (const pid of pids) { try { process.kill(pid, 'SIGCONT') } catch { /* gone */ } } },
    close: async () => {
      await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])).catch(() => {})
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export interface Relay {
  readonly port: number
  /** Drops every connection and refuses new ones (a partition whose peer answers with RST). */
  cut: () => Promise<void>
  restore: () => Promise<void>
  close: () => Promise<void>
}

/** A TCP relay in front of a store, for one gateway's path to it. */
export async function startRelay (targetPort: number): Promise<Relay> {
  const port = await freePort()
  const sockets = new Set<Socket>()
  let server: Server | null = null
  const listen = async (): Promise<void> => {
    server = createServer((client) => {
      const upstream = createConnection(targetPort, '127.0.0.1')
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
  return { port, cut, restore: listen, close: cut }
}
