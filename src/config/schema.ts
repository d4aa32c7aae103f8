/** The configuration's shape and defaults (docs/design.md, "Defaults that match the original"). */
import { z } from 'zod'
import { checkIdentityConfig, identitySection } from '../identity/schema.ts'
import { checkPolicyConfig, policySections } from '../policy/schema.ts'
import { parseRedisUrl } from './redis-url.ts'

const port = z.number().int().min(0).max(65535)
const positive = z.number().positive()
const url = (protocols: string[]) =>
  z.string().refine((value) => {
    try {
      return protocols.includes(new URL(value).protocol)
    } catch {
      return false
    }
  }, { message: `must be a URL starting with ${protocols.map((p) => p + '//').join(' or ')}` })

const WORKERS_MESSAGE = 'must be a whole number from 1 to 1024, or "auto"'

const proxy = z.strictObject({
  host: z.string().min(1).default('0.0.0.0'),
  port: port.default(8080),
  /**
   * Processes serving the proxy and control ports (node:cluster, the ports shared): 1 is the
   * single process of old, with no cluster primary; auto is one per core
   * (os.availableParallelism()). See docs/design.md, "Processes".
   */
  workers: z.union([z.literal('auto'), z.number()], { error: WORKERS_MESSAGE })
    .refine((w) => w === 'auto' || (Number.isInteger(w) && w >= 1 && w <= 1024), { message: WORKERS_MESSAGE }).default(1),
  /** Where allowed requests go. Unset: a built-in echo upstream is started. */
  upstreamUrl: url(['http:', 'https:']).optional(),
  /** Header and body timeout towards the upstream; exceeded answers 504. */
  upstreamTimeoutMs: positive.default(30_000),
  upstreamConnections: z.number().int().positive().default(128),
  /** Verify HTTPS upstream certificates. Turn off only for self-signed test upstreams. */
  upstreamTlsVerify: z.boolean().default(true),
  /** Add X-Forwarded-For/-Proto/-Host to upstream requests (src/proxy/forwarded.ts). */
  forwardedHeaders: z.boolean().default(true),
  /** Proxy WebSocket upgrades; each upgrade is limited like a request (src/proxy/websocket.ts). */
  websocket: z.boolean().default(true),
  /** Forward TRACE (off: 405; TRACE echoes the request, cookies and credentials included). */
  allowTrace: z.boolean().default(false),
  /**
   * CORS preflights (OPTIONS with Origin and Access-Control-Request-Method). forward: to the
   * upstream without a caller id and without spending, limited per client address by the
   * numbers below; limit: like any request (caller id and bucket); refuse: 403.
   */
  preflight: z.enum(['forward', 'limit', 'refuse']).default('forward'),
  /** Per client address, for forwarded preflights: a bucket of `capacity` refilled at `refillPerSecond`. */
  preflightLimit: z.strictObject({
    capacity: positive.default(20),
    refillPerSecond: positive.default(5),
    /** Most addresses remembered; the least recently seen are forgotten first. */
    maxAddresses: z.number().int().positive().default(10_000)
  }).prefault({}),
  /** Longest request head accepted; longer answers 431. */
  maxHeaderBytes: z.number().int().min(1024).default(16_384),
  /**
   * Set: every RateLimit item carries draft-11's `pk`, a keyed hash (HMAC-SHA256) of the policy
   * and the caller id under this secret, so a client can tell partitions apart without the
   * response revealing the caller id. Unset (the default): no `pk`.
   */
  partitionKeySecret: z.string().min(16).optional(),
  /** PEM files: with both set, the proxy port speaks HTTPS (TLS terminated here). */
  tlsCertFile: z.string().min(1).optional(),
  tlsKeyFile: z.string().min(1).optional()
}).refine((p) => (p.tlsCertFile === undefined) === (p.tlsKeyFile === undefined), {
  message: 'tlsCertFile and tlsKeyFile go together: set both for HTTPS, or neither',
  path: ['tlsKeyFile']
})

const control = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  port: port.default(9090),
  /** Most keys one POST /v1/check may ask about. */
  maxChecksPerRequest: z.number().int().positive().default(100),
  /** Bearer token for the admin routes; unset disables them. */
  adminToken: z.string().min(16, 'must be at least 16 characters').optional(),
  /**
   * What GET /readyz requires. postgres: PostgreSQL answers (the original contract).
   * deciding: this gateway can decide requests, with PostgreSQL or without it (Redis deciding,
   * or FAIL_MODE local/open), so an orchestrator keeps it in service through a PostgreSQL outage.
   */
  readiness: z.enum(['postgres', 'deciding']).default('postgres')
})


const limits = z.strictObject({
  capacity: positive.default(10),
  refillPerSecond: positive.default(1),
  cost: positive.default(1),
  /**
   * Who decides (docs/design.md, "The write-behind mode"): strict, PostgreSQL decides every
   * allowance (never beyond capacity + rate x T, whatever fails); write-behind, Redis decides
   * every request in one round trip and PostgreSQL is written behind every syncIntervalMs (if
   * Redis loses a bucket, its caller may be allowed again what it spent in one sync interval).
   * A policy may set its own.
   */
  consistency: z.enum(['strict', 'write-behind']).default('strict'),
  /** Write-behind: how often each gateway writes the buckets it decided to PostgreSQL (one statement per flush). */
  syncIntervalMs: z.number().int().min(1).max(60_000).default(100),
  /**
   * Write-behind: how long Redis keeps a bucket after its last request (at least until it is
   * full again). A caller back within it is decided by Redis alone; after it, its first request
   * loads PostgreSQL's row. Longer costs Redis memory (about 100 bytes a bucket) for fewer loads.
   */
  writeBehindKeyTtlSeconds: z.number().int().min(1).max(30 * 86_400).default(3600)
}).refine((l) => l.cost <= l.capacity, { message: 'cost must not exceed capacity (such a request could never pass)', path: ['cost'] })

const postgres = z.strictObject({
  url: url(['postgres:', 'postgresql:']).default('postgres://postgres@127.0.0.1:5432/postgres'),
  poolSize: z.number().int().positive().default(10),
  connectTimeoutSeconds: positive.default(2),
  /** Server-side statement timeout, and the client-side bound on every wait off the request path (admin, hand-back, overrides). */
  statementTimeoutMs: z.number().int().positive().default(2_000),
  /**
   * The deadline of one PostgreSQL decision (a batch) and of a ping. Past it the requests are
   * decided as for an unreachable PostgreSQL (Redis, else the fail mode), PostgreSQL is treated
   * as down and probed, and the connections stuck waiting are destroyed. 500 ms: over ten times
   * the p99 of a whole request at saturation on a 2-core host (docs/performance.md) and room
   * for a new pool connection's set-up on a busy one, so a busy PostgreSQL is not taken for a
   * dead one; and well below the timeouts clients give a request.
   */
  decisionTimeoutMs: z.number().int().positive().max(60_000).default(500),
  /** How long start-up waits for the migrations (another gateway may hold their lock). */
  startTimeoutMs: z.number().int().positive().default(30_000),
  /**
   * Group commit: decisions arriving within this window share one round trip and one
   * transaction. Below 1 ms (timers are no finer), those arriving in the same turn of the
   * event loop. Batches also grow by themselves while every in-flight slot is busy.
   */
  batchWindowMs: z.number().min(0).max(50).default(0.2),
  /** Most decisions in one round trip. */
  batchMaxSize: z.number().int().positive().max(10_000).default(256),
  /** Most batches in flight at once, each on its own pooled connection (docs/performance.md). */
  batchMaxInFlight: z.number().int().positive().max(64).default(4),
  /**
   * false: a decision is acknowledged before its commit reaches the disk. A PostgreSQL crash
   * may then forget the last fraction of a second of spending (those callers get the tokens
   * back); nothing is corrupted. Commits stop waiting for the disk.
   */
  synchronousCommit: z.boolean().default(true),
  /** Apply migrations at start-up. */
  migrate: z.boolean().default(true),
  /**
   * true: a PostgreSQL that does not answer at start-up stops the gateway (exit 1). false: the
   * gateway starts anyway, Redis (or the fail mode) decides, and migrations run and buckets are
   * handed back once PostgreSQL answers. A PostgreSQL that answers with an error (bad password,
   * missing database) stops it either way: that is configuration, not an outage.
   */
  requiredAtStart: z.boolean().default(true),
  /** Named prepared statements; turn off behind PgBouncer in transaction mode. */
  prepare: z.boolean().default(true),
  /**
   * The embedded PostgreSQL (PGlite) for a first run: auto = only when DATABASE_URL is unset and
   * nothing listens on the configured local port (src/first-run.ts); always; never.
   */
  embedded: z.enum(['auto', 'always', 'never']).default('auto'),
  /** Where the embedded PostgreSQL keeps its files (relative to the working directory). */
  embeddedDir: z.string().min(1).default('data/pglite')
})

const redis = z.strictObject({
  enabled: z.boolean().default(true),
  /** One server, a cluster (redis+cluster://) or Sentinel (redis+sentinel://): see redis-url.ts. */
  url: z.string().superRefine((value, ctx) => {
    try {
      parseRedisUrl(value)
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message })
    }
  }).default('redis://127.0.0.1:6379'),
  keyPrefix: z.string().default('rl:'),
  /**
   * How long a concurrency slot's lease lives unless its gateway renews it (every third of it):
   * the longest a gateway that died holding slots can block its callers.
   */
  leaseMs: z.number().int().min(300).default(10_000),
  /**
   * How often each gateway checks that every Redis shard still holds the fleet's snapshots
   * (src/limiter/reseed.ts): a shard that lost its data without a reconnection (FLUSHALL, an
   * evicted marker, a Cluster node restarted empty) is re-seeded within it.
   */
  reseedCheckMs: z.number().int().min(100).default(30_000),
  /** A Redis read slower than this is treated as a miss. */
  commandTimeoutMs: z.number().int().positive().default(50),
  connectTimeoutMs: z.number().int().positive().default(1_000)
})

/** What happens when a store is unreachable (docs/reliability.md). */
const fallback = z.strictObject({
  /** PostgreSQL down: Redis decides atomically (Lua, Redis clock); its buckets are handed back later. */
  redisDecides: z.boolean().default(true),
  /**
   * How long a decision by Redis may take while PostgreSQL is down (the cache's 50 ms would
   * send a merely late reply to the fail mode).
   */
  redisTimeoutMs: z.number().int().positive().default(500),
  /** Both stores down: local in-process buckets, forward unlimited, or answer 503. */
  mode: z.enum(['local', 'open', 'closed']).default('local'),
  /** Gateways sharing the traffic: each local bucket gets capacity and rate divided by this. */
  localReplicas: z.number().int().positive().default(1),
  /** Most callers held in local buckets; beyond it the fullest are forgotten first. */
  localMaxKeys: z.number().int().positive().default(100_000),
  /** How often PostgreSQL is probed while it is down. */
  probeIntervalMs: z.number().int().positive().max(60_000).default(500),
  /** Retry-After (seconds) on the 503 of the closed mode. */
  closedRetryAfterSeconds: z.number().int().positive().default(1),
  /**
   * How long Redis waits before it decides a bucket it takes over from PostgreSQL (docs/design.md,
   * "The take-over fence"): another gateway's PostgreSQL allowance of that bucket may still be on
   * its way to Redis. Unset: 2 × postgres.decisionTimeoutMs (the wait for a batch slot, then
   * the answer) + redis.commandTimeoutMs + 100 ms, the longest such an allowance can take. 0 decides at once (faster fail-over, the bound becomes
   * one request per other gateway across a switch).
   */
  takeoverFenceMs: z.number().int().min(0).max(60_000).optional()
})

const log = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /**
   * One JSON line per proxied request at info (README, "Running it"). Off by default: the load
   * balancer in front usually keeps one, and the line adds a serialisation to every request
   * (bench case 3A; the writes are buffered, access-destination.ts); no per-request work is
   * done while it is off.
   */
  access: z.boolean().default(false),
  /** The caller id in the access log: as sent, or its SHA-256 (first 16 hex digits). */
  accessCaller: z.enum(['raw', 'hashed']).default('raw')
})

/**
 * The over-limit cache (docs/performance.md): refuse callers known to be over their limit from
 * process memory, with no network round trip (X-Data-Source: local). Off by default, so the
 * seed's "redis" refusals show. Read at start-up only.
 */
const localDenyCache = z.strictObject({
  enabled: z.boolean().default(false),
  /** Most callers remembered; the least recently used goes first. */
  maxEntries: z.number().int().positive().default(10_000)
})

/**
 * Whether a running gateway applies a changed section on reload (hot) or needs a restart
 * (restart: it holds listeners, pools, connections or caches built at start-up). Each
 * section says which, here, so a new section cannot be added without deciding.
 */
export type Reload = 'hot' | 'restart'

const section = <S extends z.ZodType>(schema: S, reload: Reload): { readonly schema: S, readonly reload: Reload } => ({ schema, reload })

const SECTIONS = {
  proxy: section(proxy.prefault({}), 'restart'),
  control: section(control.prefault({}), 'restart'),
  identity: section(identitySection.prefault({}), 'hot'),
  limits: section(limits.prefault({}), 'hot'),
  postgres: section(postgres.prefault({}), 'restart'),
  redis: section(redis.prefault({}), 'restart'),
  localDenyCache: section(localDenyCache.prefault({}), 'restart'),
  /** Fail mode, shares, probe interval, Redis decision timeout: applied by the limiter on reload. */
  fallback: section(fallback.prefault({}), 'hot'),
  log: section(log.prefault({}), 'restart'),
  // Policies (docs/policies.md): rebuilt whole on every reload.
  policies: section(policySections.policies, 'hot'),
  defaultPolicy: section(policySections.defaultPolicy, 'hot'),
  routes: section(policySections.routes, 'hot'),
  tiers: section(policySections.tiers, 'hot'),
  access: section(policySections.access, 'hot'),
  upstreams: section(policySections.upstreams, 'hot')
}

type Sections = typeof SECTIONS
const shape = Object.fromEntries(Object.entries(SECTIONS).map(([name, s]) => [name, s.schema])) as { [K in keyof Sections]: Sections[K]['schema'] }

export const configSchema = z.strictObject(shape).superRefine((config, ctx) => {
  for (const issue of [...checkIdentityConfig(config.identity), ...checkPolicyConfig(config)]) ctx.addIssue({ code: 'custom', path: issue.path, message: issue.message })
})

/** Each section's reload behaviour, as declared above. */
export const RELOAD = Object.fromEntries(Object.entries(SECTIONS).map(([name, s]) => [name, s.reload])) as { readonly [K in keyof Sections]: Reload }

export type Config = z.output<typeof configSchema>
export type ConfigInput = z.input<typeof configSchema>
