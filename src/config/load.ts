/**
 * Configuration = schema defaults, overlaid by config/default.yaml, then the file named by
 * CONFIG_FILE, then environment variables. Any error names the field and where it came from.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { packageRoot } from '../core/package.ts'
import { parse as parseYaml } from 'yaml'
import { configSchema, type Config } from './schema.ts'

type Kind = 'string' | 'int' | 'number' | 'boolean' | 'int-or-auto'

/** Public environment names (README's config table) and the field each sets. */
export const ENVIRONMENT: ReadonlyArray<readonly [string, string, Kind]> = [
  ['PORT', 'proxy.port', 'int'],
  ['HOST', 'proxy.host', 'string'],
  ['WORKERS', 'proxy.workers', 'int-or-auto'],
  ['UPSTREAM_URL', 'proxy.upstreamUrl', 'string'],
  ['UPSTREAM_TIMEOUT_MS', 'proxy.upstreamTimeoutMs', 'number'],
  ['UPSTREAM_TLS_VERIFY', 'proxy.upstreamTlsVerify', 'boolean'],
  ['FORWARDED_HEADERS', 'proxy.forwardedHeaders', 'boolean'],
  ['WEBSOCKET', 'proxy.websocket', 'boolean'],
  ['ALLOW_TRACE', 'proxy.allowTrace', 'boolean'],
  ['PREFLIGHT', 'proxy.preflight', 'string'],
  ['RATELIMIT_PARTITION_KEY_SECRET', 'proxy.partitionKeySecret', 'string'],
  ['TLS_CERT_FILE', 'proxy.tlsCertFile', 'string'],
  ['TLS_KEY_FILE', 'proxy.tlsKeyFile', 'string'],
  ['CONTROL_PORT', 'control.port', 'int'],
  ['CONTROL_HOST', 'control.host', 'string'],
  ['ADMIN_TOKEN', 'control.adminToken', 'string'],
  ['READINESS', 'control.readiness', 'string'],
  ['USER_ID_HEADER', 'identity.header', 'string'],
  ['IDENTITY_SOURCE', 'identity.source', 'string'],
  ['JWT_SECRET', 'identity.jwt.secret', 'string'],
  ['JWT_PUBLIC_KEY', 'identity.jwt.publicKey', 'string'],
  ['RATE_LIMIT_CAPACITY', 'limits.capacity', 'number'],
  ['RATE_LIMIT_REFILL_PER_SECOND', 'limits.refillPerSecond', 'number'],
  ['RATE_LIMIT_COST', 'limits.cost', 'number'],
  ['CONSISTENCY', 'limits.consistency', 'string'],
  ['SYNC_INTERVAL_MS', 'limits.syncIntervalMs', 'int'],
  ['WRITE_BEHIND_KEY_TTL_SECONDS', 'limits.writeBehindKeyTtlSeconds', 'int'],
  ['LOCAL_DENY_CACHE', 'localDenyCache.enabled', 'boolean'],
  ['LOCAL_DENY_CACHE_SIZE', 'localDenyCache.maxEntries', 'int'],
  ['DATABASE_URL', 'postgres.url', 'string'],
  ['DATABASE_POOL_SIZE', 'postgres.poolSize', 'int'],
  ['DATABASE_DECISION_TIMEOUT_MS', 'postgres.decisionTimeoutMs', 'int'],
  ['DATABASE_START_TIMEOUT_MS', 'postgres.startTimeoutMs', 'int'],
  ['DATABASE_BATCH_WINDOW_MS', 'postgres.batchWindowMs', 'number'],
  ['DATABASE_BATCH_MAX_SIZE', 'postgres.batchMaxSize', 'int'],
  ['DATABASE_BATCH_MAX_IN_FLIGHT', 'postgres.batchMaxInFlight', 'int'],
  ['DATABASE_SYNCHRONOUS_COMMIT', 'postgres.synchronousCommit', 'boolean'],
  ['DATABASE_PREPARE', 'postgres.prepare', 'boolean'],
  ['DATABASE_REQUIRED_AT_START', 'postgres.requiredAtStart', 'boolean'],
  ['DATABASE_EMBEDDED', 'postgres.embedded', 'string'],
  ['DATABASE_EMBEDDED_DIR', 'postgres.embeddedDir', 'string'],
  ['REDIS_URL', 'redis.url', 'string'],
  ['REDIS_ENABLED', 'redis.enabled', 'boolean'],
  ['REDIS_KEY_PREFIX', 'redis.keyPrefix', 'string'],
  ['CONCURRENCY_LEASE_MS', 'redis.leaseMs', 'int'],
  ['REDIS_RESEED_CHECK_MS', 'redis.reseedCheckMs', 'int'],
  ['REDIS_TIMEOUT_MS', 'redis.commandTimeoutMs', 'int'],
  ['FAIL_MODE', 'fallback.mode', 'string'],
  ['FAIL_LOCAL_REPLICAS', 'fallback.localReplicas', 'int'],
  ['FALLBACK_TAKEOVER_FENCE_MS', 'fallback.takeoverFenceMs', 'int'],
  ['LOG_LEVEL', 'log.level', 'string'],
  ['ACCESS_LOG', 'log.access', 'boolean'],
  ['ACCESS_LOG_CALLER', 'log.accessCaller', 'string']
]

export class ConfigError extends Error {
  override name = 'ConfigError'
}


type Tree = Record<string, unknown>

function isTree (value: unknown): value is Tree {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function merge (base: Tree, over: Tree): Tree {
  const out: Tree = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const prev = out[key]
    out[key] = isTree(prev) && isTree(value) ? merge(prev, value) : value
  }
  return out
}

function readFile (path: string): Tree {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`config file ${path}: ${(err as Error).message}`)
  }
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (err) {
    throw new ConfigError(`config file ${path}: not valid YAML/JSON: ${(err as Error).message}`)
  }
  if (doc == null) return {}
  if (!isTree(doc)) throw new ConfigError(`config file ${path}: must contain a mapping at the top level`)
  return doc
}

function convert (name: string, raw: string, kind: Kind): unknown {
  switch (kind) {
    case 'string': return raw
    case 'boolean':
      if (/^(1|true|yes|on)$/i.test(raw)) return true
      if (/^(0|false|no|off)$/i.test(raw)) return false
      throw new ConfigError(`${name}=${raw}: must be true or false`)
    case 'int-or-auto':
      // Anything else reaches the schema as it was written, whose message names the choices.
      return raw === 'auto' || raw.trim() === '' || !Number.isFinite(Number(raw)) ? raw : Number(raw)
    case 'int':
    case 'number': {
      const n = Number(raw)
      if (raw.trim() === '' || !Number.isFinite(n)) throw new ConfigError(`${name}=${raw}: must be a number`)
      return n
    }
  }
}

function setPath (tree: Tree, path: string, value: unknown): void {
  const parts = path.split('.')
  let node = tree
  for (const part of parts.slice(0, -1)) {
    const child = node[part]
    node = node[part] = isTree(child) ? { ...child } : {}
  }
  node[parts[parts.length - 1]!] = value
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv
  /** Overrides applied last (tests). */
  overrides?: Tree
  /** Skip config/default.yaml (tests that want schema defaults only). */
  skipDefaultFile?: boolean
}

export function loadConfig (options: LoadOptions = {}): Config {
  return loadConfigWithSources(options).config
}

/** A loaded configuration and where it came from (`print-config`, the start-up log). */
export interface LoadedConfig {
  readonly config: Config
  /** The files read, in the order they were merged. */
  readonly files: readonly string[]
  /**
   * Dotted field path → where its value was set: `file <path>`, `env <VAR>` or `override`.
   * A field absent here (and under no listed prefix) has its schema default.
   */
  readonly sources: ReadonlyMap<string, string>
}

/** Records every leaf path of `tree` (arrays are leaves) as coming from `source`. */
function recordLeaves (tree: Tree, source: string, into: Map<string, string>, prefix = ''): void {
  for (const [key, value] of Object.entries(tree)) {
    const path = prefix + key
    if (isTree(value)) recordLeaves(value, source, into, path + '.')
    else {
      // A later source replaces a whole subtree set earlier (an array or a scalar).
      for (const known of [...into.keys()]) if (known.startsWith(path + '.')) into.delete(known)
      into.set(path, source)
    }
  }
}

/** Where a field's value came from: the nearest recorded path at or above it, else "default". */
export function sourceOf (sources: ReadonlyMap<string, string>, path: string): string {
  for (let p = path; p !== ''; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    const s = sources.get(p)
    if (s !== undefined) return s
  }
  return 'default'
}

export function loadConfigWithSources (options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env
  let tree: Tree = {}
  const files: string[] = []
  const sources = new Map<string, string>()
  const defaultFile = join(packageRoot(), 'config', 'default.yaml')
  const addFile = (path: string, source: string): void => {
    const doc = readFile(path)
    tree = merge(tree, doc)
    files.push(path)
    recordLeaves(doc, source, sources)
  }
  // The package's own defaults file only restates the schema defaults: "default" either way.
  if (!options.skipDefaultFile && existsSync(defaultFile)) addFile(defaultFile, 'default')
  if (env.CONFIG_FILE) addFile(resolve(env.CONFIG_FILE), `file ${resolve(env.CONFIG_FILE)}`)

  const fromEnv = new Map<string, string>()
  // Every bad variable is reported, with every bad field of the rest.
  const envErrors: string[] = []
  for (const [name, path, kind] of ENVIRONMENT) {
    const raw = env[name]
    if (raw === undefined || raw === '') continue
    let value: unknown
    try {
      value = convert(name, raw, kind)
    } catch (err) {
      envErrors.push(`  ${path}: ${(err as Error).message}`)
      continue
    }
    setPath(tree, path, value)
    fromEnv.set(path, name)
    sources.set(path, `env ${name}`)
  }
  if (options.overrides) {
    tree = merge(tree, options.overrides)
    recordLeaves(options.overrides, 'override', sources)
  }

  const result = configSchema.safeParse(tree)
  if (result.success && envErrors.length === 0) return { config: result.data, files, sources }
  if (result.success) throw new ConfigError('invalid configuration:\n' + envErrors.join('\n'))
  const lines = result.error.issues.map((issue) => {
    const keys = 'keys' in issue && Array.isArray(issue.keys) ? issue.keys : []
    const base = issue.path.join('.')
    const field = keys.length > 0 ? keys.map((k) => (base ? base + '.' : '') + String(k)).join(', ') : base || '(top level)'
    const source = fromEnv.get(base)
    return `  ${field}: ${issue.message}${source ? ` (from ${source})` : ''}`
  })
  throw new ConfigError('invalid configuration:\n' + [...envErrors, ...lines].join('\n'))
}
