/**
 * Private store servers to inject faults on: a redis-server on a free port and a throwaway
 * PostgreSQL cluster (initdb/pg_ctl in a temp dir). Never the machine's shared servers
 * (127.0.0.1:5432 / :6379): other tests and other people's runs use them.
 *
 * Shared by the chaos suite (scripts/chaos) and the tests (test/helpers/private-stores.ts wraps
 * these with tap teardowns), so it must not import tap: the product build compiles scripts/.
 *
 * PostgreSQL refuses to run as root, so as root the cluster is created and run as the
 * `postgres` user (runuser); otherwise as the current user.
 *
 * Both can listen on extra addresses besides 127.0.0.1 (`listen`): the chaos suite gives each
 * store an address of its own on a veth, so that one gateway's path to one store can be cut by
 * a route to that address alone (scripts/lib/netns.ts).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { appendFileSync, chmodSync, chownSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { pollUntil } from './poll.ts'

const run = promisify(execFile)

/** A TCP port that was free a moment ago (the OS picks it; the caller binds it right away). */
export async function freePort (host = '127.0.0.1'): Promise<number> {
  const server = createServer()
  server.listen(0, host)
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

export interface RedisServerOptions {
  /** Addresses to listen on besides 127.0.0.1. */
  listen?: string[]
}

export interface RedisServer {
  readonly port: number
  /** URL on 127.0.0.1. */
  readonly url: string
  /** SIGKILL: connections drop at once, nothing is saved. */
  kill: () => Promise<void>
  /** Starts an empty server on the same port and addresses (after kill). */
  start: () => Promise<void>
  /** Every client gets no answer for `ms` (CLIENT PAUSE ms ALL). */
  pause: (ms: number) => Promise<void>
  readonly running: boolean
  /** Same as kill. */
  close: () => Promise<void>
}

export async function startRedisServer (options: RedisServerOptions = {}): Promise<RedisServer> {
  const port = await freePort()
  const bind = ['127.0.0.1', ...(options.listen ?? [])]
  let child: ChildProcess | null = null
  const ping = async (): Promise<boolean> => {
    const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    c.on('error', () => {})
    try { await c.connect(); return (await c.ping()) === 'PONG' } finally { c.disconnect() }
  }
  const start = async (): Promise<void> => {
    // protected-mode off: with no password it would refuse the non-loopback addresses.
    child = spawn('redis-server', ['--port', String(port), '--bind', ...bind, '--protected-mode', 'no', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' })
    await pollUntil(`redis-server on port ${port}`, ping, { timeoutMs: 10_000 })
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
    get running () { return child !== null },
    close: kill
  }
}

export interface PostgresClusterOptions {
  /** Addresses to listen on besides 127.0.0.1. */
  listen?: string[]
  /** CIDRs allowed to connect (trust), besides loopback: the addresses clients come from. */
  allowFrom?: string[]
  /** max_connections (default 60). */
  maxConnections?: number
}

export interface PostgresCluster {
  readonly port: number
  /** URL of its `postgres` database on 127.0.0.1. */
  readonly url: string
  /** Fast shutdown: connections are terminated, in-flight transactions rolled back. */
  stop: () => Promise<void>
  /** pg_ctl stop -m immediate: no shutdown checkpoint, connections cut at once. */
  stopImmediate: () => Promise<void>
  start: () => Promise<void>
  /** SIGSTOP the postmaster and every backend; returns their pids for `resume` (SIGCONT). */
  stall: () => Promise<number[]>
  resume: (pids: number[]) => void
  /** Runs SQL on a short-lived connection (for checking rows). */
  query: <T extends object>(text: string, params?: unknown[]) => Promise<T[]>
  /** Stops it (immediate) and removes its directory. */
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
      // Fields after the command name, which may contain spaces, start after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(entry))
    } catch { /* gone */ }
  }
  return out
}

/** initdb in a temp dir, started on a free port. Takes a second or two. */
export async function startPostgresCluster (options: PostgresClusterOptions = {}): Promise<PostgresCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-pg-'))
  const data = join(dir, 'data')
  if (process.getuid?.() === 0) {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])])
    chownSync(dir, Number(uid.stdout), Number(gid.stdout))
  }
  chmodSync(dir, 0o700)
  const port = await freePort()
  await run(...asPostgresUser('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale', 'C']))
  // initdb's pg_hba.conf trusts loopback only; runuser wrote it, root may append.
  for (const cidr of options.allowFrom ?? []) appendFileSync(join(data, 'pg_hba.conf'), `host all all ${cidr} trust\n`)
  const listen = ['127.0.0.1', ...(options.listen ?? [])].join(',')
  const pgOptions = `-p ${port} -k ${dir} -c listen_addresses=${listen} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=${options.maxConnections ?? 60}`
  const start = async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-o', pgOptions, '-l', join(dir, 'log'), '-w', '-t', '30', 'start']))
  }
  const stopWith = (mode: 'fast' | 'immediate') => async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', mode, '-w', '-t', '30', 'stop']))
  }
  const postmaster = (): number => Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0])
  await start()
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  return {
    port,
    url,
    stop: stopWith('fast'),
    stopImmediate: stopWith('immediate'),
    start,
    stall: async () => {
      const pm = postmaster()
      const pids = [pm, ...childrenOf(pm)]
      for (const pid of pids) { try { process.kill(pid, 'SIGSTOP') } catch { /* gone */ } }
      return pids
    },
    resume: (pids) => { for (const pid of pids) { try { process.kill(pid, 'SIGCONT') } catch { /* gone */ } } },
    query: async <T extends object>(text: string, params: unknown[] = []) => {
      const sql = postgres(url, { max: 1, onnotice: () => {} })
      try {
        return await sql.unsafe<T[]>(text, params as never[])
      } finally {
        await sql.end()
      }
    },
    close: async () => {
      await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])).catch(() => {})
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
