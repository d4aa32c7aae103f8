/**
 * Private store servers for fault-injection tests: a redis-server and a throwaway PostgreSQL
 * cluster that the test starts, stops, kills and pauses itself. Never point fault injection at
 * the machine's shared servers (127.0.0.1:5432 / :6379): other tests run against them.
 *
 * PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and
 * run as the `postgres` user (runuser); otherwise as the current user.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { waitFor } from './http.ts'

interface Teardown { teardown: (fn: () => unknown) => void }

const run = promisify(execFile)

/** A TCP port that was free a moment ago (the OS picks it; the caller binds it right away). */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

export interface PrivateRedis {
  readonly port: number
  readonly url: string
  /** A client of its own (no offline queue tricks): for inspecting keys. Reconnects after restarts. */
  readonly client: Redis
  /** SIGKILL: the connection drops at once, nothing is saved. */
  kill: () => Promise<void>
  /** Starts an empty server on the same port (after kill). */
  start: () => Promise<void>
  /** Every client (ours included) gets no answer for `ms` (CLIENT PAUSE ALL). */
  pause: (ms: number) => Promise<void>
  readonly running: boolean
}

export async function startPrivateRedis (t: Teardown): Promise<PrivateRedis> {
  const port = await freePort()
  let child: ChildProcess | null = null
  const start = async (): Promise<void> => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' })
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    probe.on('error', () => {})
    try {
      await waitFor(async () => {
        try {
          if (probe.status !== 'ready') await probe.connect()
          return (await probe.ping()) === 'PONG'
        } catch {
          return false
        }
      }, { timeoutMs: 10_000, what: `redis-server on port ${port}` })
    } finally {
      probe.disconnect()
    }
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
  const client = new Redis({ port, host: '127.0.0.1', retryStrategy: () => 50, maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  t.teardown(async () => {
    client.disconnect()
    await kill()
  })
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    client,
    kill,
    start,
    pause: async (ms) => {
      const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null })
      c.on('error', () => {})
      await c.connect()
      await c.call('CLIENT', 'PAUSE', String(ms), 'ALL')
      c.disconnect()
    },
    get running () { return child !== null }
  }
}

export interface PrivatePostgres {
  readonly port: number
  /** URL of its `postgres` database. */
  readonly url: string
  /** Fast shutdown: connections are terminated, in-flight transactions rolled back. */
  stop: () => Promise<void>
  start: () => Promise<void>
  /** Runs SQL on a short-lived connection (for checking rows). */
  query: <T extends object>(text: string, params?: unknown[]) => Promise<T[]>
}

function asPostgresUser (cmd: string, args: string[]): [string, string[]] {
  if (process.getuid?.() === 0) return ['runuser', ['-u', 'postgres', '--', cmd, ...args]]
  return [cmd, args]
}

/** initdb in a temp dir, started on a free port; removed at teardown. Takes a second or two. */
export async function startPrivatePostgres (t: Teardown): Promise<PrivatePostgres> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-pg-'))
  const data = join(dir, 'data')
  const root = process.getuid?.() === 0
  if (root) {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])])
    chownSync(dir, Number(uid.stdout), Number(gid.stdout))
  }
  chmodSync(dir, 0o700)
  const port = await freePort()
  await run(...asPostgresUser('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale', 'C']))
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60`
  const start = async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', '-t', '30', 'start']))
  }
  const stop = async (): Promise<void> => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', '30', 'stop']))
  }
  await start()
  t.teardown(async () => {
    await run(...asPostgresUser('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])).catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  })
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  return {
    port,
    url,
    stop,
    start,
    query: async <T extends object>(text: string, params: unknown[] = []) => {
      const sql = postgres(url, { max: 1, onnotice: () => {} })
      try {
        return await sql.unsafe<T[]>(text, params as never[])
      } finally {
        await sql.end()
      }
    }
  }
}
