/**
 * Starting real gateways for tests: in this process (startTestGateway) or as a separate
 * `node dist/src/main.js` process (spawnGateway, for multi-process and signal tests).
 * Each gets its own database and Redis key prefix unless the test shares them on purpose.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { loadConfig } from '../../src/config/load.ts'
import { packageRoot } from '../../src/core/package.ts'
import type { Config } from '../../src/config/schema.ts'
import { createLogger } from '../../src/observability/log.ts'
import { startGateway, type Gateway } from '../../src/server.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './stores.ts'
import { startUpstream, type TestUpstream } from './upstream.ts'

type Tree = Record<string, unknown>
interface TapLike {
  teardown: (fn: () => unknown) => void
  /** tap's Test: a failing test prints its gateways' warnings (startTestGateway). */
  passing?: () => boolean
  comment?: (...message: unknown[]) => void
}

/** At most this many of a failing test's gateway warnings are printed. */
const WARNINGS_SHOWN = 40

export interface LogLine { level: number, msg: string, [key: string]: unknown }

export interface TestGateway extends Gateway {
  readonly config: Config
  readonly upstream: TestUpstream | null
  readonly logs: LogLine[]
  readonly databaseUrl: string
  readonly redisPrefix: string
}

export interface TestGatewayOptions {
  /** Config overrides (merged last). */
  config?: Tree
  /** Share a database with another gateway (default: a new one). */
  databaseUrl?: string
  /** Share a Redis key prefix with another gateway (default: a new one). */
  redisPrefix?: string
  redisUrl?: string
  /** An upstream to forward to (default: a new test upstream). */
  upstreamUrl?: string
  logLevel?: string
  /** A config file (CONFIG_FILE) read at start and again on reload; watched when `watch` is set. */
  configFile?: string
  watch?: boolean
}

function deepMerge (a: Tree, b: Tree): Tree {
  const out: Tree = { ...a }
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k]
    out[k] = typeof prev === 'object' && prev !== null && typeof v === 'object' && v !== null && !Array.isArray(v) ? deepMerge(prev as Tree, v as Tree) : v
  }
  return out
}

export async function startTestGateway (t: TapLike, options: TestGatewayOptions = {}): Promise<TestGateway> {
  const databaseUrl = options.databaseUrl ?? await createTestDatabase(t)
  const redisUrl = options.redisUrl ?? TEST_REDIS_URL
  const redisPrefix = options.redisPrefix ?? createRedisPrefix(t, redisUrl)
  const upstream = options.upstreamUrl === undefined ? await startUpstream(t) : null
  const base: Tree = {
    proxy: { port: 0, host: '127.0.0.1', upstreamUrl: options.upstreamUrl ?? upstream!.url },
    control: { port: 0, host: '127.0.0.1' },
    // A roomy decision deadline: a starved test machine must not look like a stalled PostgreSQL
    // (the deadline tests set their own).
    postgres: { url: databaseUrl, decisionTimeoutMs: 5_000 },
    // With that deadline the take-over fence would be 5 s: tests of the fence set their own.
    fallback: { takeoverFenceMs: 0 },
    redis: { url: redisUrl, keyPrefix: redisPrefix },
    log: { level: options.logLevel ?? 'info' }
  }
  const env = options.configFile === undefined ? {} : { CONFIG_FILE: options.configFile }
  const load = (): Config => loadConfig({ env, overrides: deepMerge(base, options.config ?? {}) })
  const config = load()
  const logs: LogLine[] = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line) as LogLine)
      done()
    }
  })
  const gateway = await startGateway(config, createLogger(config.log.level, sink), {
    loadConfig: load,
    ...(options.watch === true && options.configFile !== undefined ? { watch: [options.configFile] } : {})
  })
  t.teardown(() => {
    // A failure in a flow with timing in it (outages, hand-backs) is rarely reproducible: what
    // the gateway warned about is the best lead the run leaves.
    if (t.passing?.() === false && t.comment !== undefined) {
      const warnings = logs.filter((l) => l.level >= 40)
      for (const line of warnings.slice(-WARNINGS_SHOWN)) t.comment(`gateway warning: ${JSON.stringify(line)}`)
    }
    return gateway.close()
  })
  return Object.assign(gateway, { config, upstream, logs, databaseUrl, redisPrefix })
}

export interface SpawnedGateway {
  readonly proxyUrl: string
  readonly controlUrl: string
  readonly child: ChildProcess
  readonly output: string[]
  /** Sends a signal and resolves with the exit code. */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>
}

/** Runs the built gateway (npm test builds first) with the given environment. */
export async function spawnGateway (t: TapLike, env: Record<string, string>, { startTimeoutMs = 20_000 } = {}): Promise<SpawnedGateway> {
  const child = spawn(process.execPath, [join(packageRoot(), 'dist', 'src', 'main.js')], {
    env: { PATH: process.env.PATH ?? '', PORT: '0', CONTROL_PORT: '0', HOST: '127.0.0.1', DATABASE_DECISION_TIMEOUT_MS: '5000', FALLBACK_TAKEOVER_FENCE_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const output: string[] = []
  const ready = new Promise<{ port: number, control_port: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start within ${startTimeoutMs / 1000} s:\n` + output.join('\n'))), startTimeoutMs)
    createInterface({ input: child.stdout! }).on('line', (line) => {
      output.push(line)
      if (line.includes('Starting server on')) {
        clearTimeout(timer)
        resolve(JSON.parse(line) as { port: number, control_port: number })
      }
    })
    child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')))
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`gateway exited with ${code}:\n` + output.join('\n'))) })
  })
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    // Killed by a signal, a child has signalCode set and exitCode null: it will not exit again.
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
    child.kill(signal)
    const [code] = await once(child, 'exit') as [number | null]
    return code
  }
  t.teardown(() => stop('SIGKILL'))
  const { port, control_port: controlPort } = await ready
  return { proxyUrl: `http://127.0.0.1:${port}`, controlUrl: `http://127.0.0.1:${controlPort}`, child, output, stop }
}

/** A gateway of two worker processes (WORKERS=2) on its own database and key prefix, the access log on. */
export async function spawnTwoWorkers (t: TapLike, env: Record<string, string> = {}): Promise<SpawnedGateway> {
  const upstream = await startUpstream(t)
  return await spawnGateway(t, {
    WORKERS: '2',
    DATABASE_URL: await createTestDatabase(t),
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: createRedisPrefix(t),
    UPSTREAM_URL: upstream.url,
    ACCESS_LOG: 'true',
    ...env
  }, { startTimeoutMs: 40_000 })
}
