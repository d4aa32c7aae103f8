/**
 * Private store servers for fault-injection tests: a redis-server and a throwaway PostgreSQL
 * cluster that the test starts, stops, kills and pauses itself, removed at teardown. Never point
 * fault injection at the machine's shared servers (127.0.0.1:5432 / :6379): other tests run
 * against them. The servers themselves are scripts/lib/private-stores.ts (shared with the chaos
 * suite); this adds tap teardowns and a Redis client for inspecting keys.
 */
import { Redis } from 'ioredis'
import { freePort, startPostgresCluster, startRedisServer } from '../../scripts/lib/private-stores.ts'

export { freePort }

interface Teardown { teardown: (fn: () => unknown) => void }

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
  const server = await startRedisServer()
  const client = new Redis({ port: server.port, host: '127.0.0.1', retryStrategy: () => 50, maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  t.teardown(async () => {
    client.disconnect()
    await server.close()
  })
  return {
    port: server.port,
    url: server.url,
    client,
    kill: server.kill,
    start: server.start,
    pause: server.pause,
    get running () { return server.running }
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

/** initdb in a temp dir, started on a free port; removed at teardown. Takes a second or two. */
export async function startPrivatePostgres (t: Teardown): Promise<PrivatePostgres> {
  const cluster = await startPostgresCluster()
  t.teardown(cluster.close)
  return { port: cluster.port, url: cluster.url, stop: cluster.stop, start: cluster.start, query: cluster.query }
}
