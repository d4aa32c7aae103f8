/**
 * The zero-setup first run: `npm start` on a laptop with neither PostgreSQL nor Redis.
 *
 * With postgres.embedded = auto (the default), the embedded PostgreSQL is used only when
 * DATABASE_URL is not set, the configured database is on this machine (loopback), and nothing
 * listens on its port. Anything else (DATABASE_URL set, a remote host, a server that answers,
 * even one that then refuses us) goes to the configured PostgreSQL as before, so a production
 * gateway whose database is down fails loudly instead of quietly keeping buckets of its own.
 * In that embedded mode Redis is likewise dropped when REDIS_URL is not set and nothing
 * listens locally: the documented degraded mode, without reconnect noise.
 */
import { connect } from 'node:net'
import type { Config } from './config/schema.ts'
import type { Logger } from './observability/log.ts'
import { startEmbeddedPostgres, type EmbeddedPostgres } from './stores/postgres/embedded.ts'
import { parseRedisUrl } from './config/redis-url.ts'

export type ProbeResult = 'open' | 'refused' | 'unreachable'
export type Probe = (host: string, port: number) => Promise<ProbeResult>

/** Does anything accept TCP connections on host:port? */
export const probeTcp: Probe = async (host, port) => await new Promise((resolve) => {
  const socket = connect({ host, port, timeout: 500 })
  const done = (result: ProbeResult): void => { socket.destroy(); resolve(result) }
  socket.once('connect', () => done('open'))
  socket.once('timeout', () => done('unreachable'))
  socket.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED' ? 'refused' : 'unreachable'))
})

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[?::1\]?)$/i

/** host:port of a URL when it names one TCP server on this machine; otherwise null. */
export function loopbackAddress (url: string, defaultPort: number): { host: string, port: number } | null {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return null
  }
  // ?host=/var/run/postgresql means a Unix socket: not something a TCP probe can judge.
  if (parsed.searchParams.has('host') || !LOOPBACK.test(parsed.hostname)) return null
  return { host: parsed.hostname.replace(/^\[|\]$/g, ''), port: parsed.port === '' ? defaultPort : Number(parsed.port) }
}

export interface FirstRunPlan {
  readonly embeddedPostgres: boolean
  readonly disableRedis: boolean
  /** What was probed and found, for the log line. */
  readonly reason: string
}

/** The decision, apart from starting anything. */
export async function planFirstRun (config: Config, env: NodeJS.ProcessEnv, probe: Probe = probeTcp): Promise<FirstRunPlan> {
  const mode = config.postgres.embedded
  let embedded = mode === 'always'
  let reason = mode === 'always' ? 'postgres.embedded is "always"' : ''
  if (mode === 'auto' && (env.DATABASE_URL ?? '') === '') {
    const target = loopbackAddress(config.postgres.url, 5432)
    if (target !== null && await probe(target.host, target.port) === 'refused') {
      embedded = true
      reason = `no DATABASE_URL set and nothing listens on ${target.host}:${target.port}`
    }
  }
  let disableRedis = false
  if (embedded && config.redis.enabled && (env.REDIS_URL ?? '') === '') {
    const parsed = parseRedisUrl(config.redis.url)
    const target = parsed.mode === 'standalone' ? loopbackAddress(config.redis.url, 6379) : null
    disableRedis = target !== null && await probe(target.host, target.port) === 'refused'
  }
  return { embeddedPostgres: embedded, disableRedis, reason }
}

export interface FirstRun {
  /** The configuration to start the gateway with. */
  readonly config: Config
  readonly embedded: EmbeddedPostgres | null
  /** The same substitutions for a configuration read again (hot reload). */
  apply: (config: Config) => Config
  /** Stops the embedded PostgreSQL, after the gateway has closed its pool. */
  close: () => Promise<void>
}

export async function prepareFirstRun (config: Config, env: NodeJS.ProcessEnv, log: Logger, probe: Probe = probeTcp): Promise<FirstRun> {
  const plan = await planFirstRun(config, env, probe)
  if (!plan.embeddedPostgres) return { config, embedded: null, apply: (c) => c, close: async () => {} }

  const embedded = await startEmbeddedPostgres(config.postgres.embeddedDir)
  log.warn({ data_dir: embedded.dataDir, reason: plan.reason },
    `Using the embedded PostgreSQL (PGlite) in ${embedded.dataDir}: this is a single-process development setup. ` +
    'Set DATABASE_URL to a real PostgreSQL for anything else (several gateways, production).')
  if (plan.disableRedis) {
    log.warn(`No REDIS_URL set and nothing listens on ${config.redis.url}: running without the Redis cache; PostgreSQL decides every request.`)
  }
  // One connection: PGlite is a single backend (see embedded-postgres.ts).
  const apply = (c: Config): Config => ({
    ...c,
    postgres: { ...c.postgres, url: embedded.url, poolSize: 1 },
    redis: plan.disableRedis ? { ...c.redis, enabled: false } : c.redis
  })
  return { config: apply(config), embedded, apply, close: () => embedded.close() }
}
