/**
 * Wires one gateway: stores, limiter, the proxy and control listeners. main.ts adds process
 * concerns (signals, exit codes); tests use this directly. Everything started is registered
 * with the lifecycle, which closes it in reverse order on shutdown or on a failed start-up.
 */
import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import type { AddressInfo } from 'node:net'
import type { Server as HttpsServer } from 'node:https'
import type { FastifyInstance } from 'fastify'
import { RELOAD, type Config } from './config/schema.ts'
import { watchFiles } from './config/watch.ts'
import { Lifecycle } from './lifecycle.ts'
import type { Logger } from './observability/log.ts'
import { Metrics } from './observability/metrics.ts'
import { Limiter } from './limiter/limiter.ts'
import { isUnreachable, PostgresStore } from './stores/postgres/postgres-store.ts'
import { OverrideStore } from './stores/postgres/override-store.ts'
import { StoreHealth } from './stores/health.ts'
import { RedisDecider } from './stores/redis/redis-decider.ts'
import { RedisSnapshotCache, SNAPSHOT_WRITE_HOLD_MS } from './stores/redis/snapshot-cache.ts'
import { RedisWriteBehind } from './stores/redis/write-behind-redis.ts'
import { PostgresLedger } from './stores/postgres/write-behind-ledger.ts'
import { WriteBehindSync } from './limiter/write-behind.ts'
import { Reseed } from './limiter/reseed.ts'
import { RedisLeases } from './stores/redis/leases.ts'
import { ConcurrencyLimiter } from './limiter/concurrency.ts'
import { buildProxy, readTlsFiles } from './proxy/app.ts'
import { startEchoUpstream } from './proxy/echo-upstream.ts'
import { buildControl } from './control/app.ts'
import { Holder } from './policy/holder.ts'
import { buildRuntime, type Runtime } from './admission/runtime.ts'
import { localReadiness } from './control/readiness.ts'
import type { WorkerLink } from './workers/worker.ts'

export type ReloadResult = { readonly ok: true, readonly generation: number } | { readonly ok: false, readonly error: string }

export interface GatewayOptions {
  /** Reads the configuration again for a hot reload; without it reload() refuses. */
  readonly loadConfig?: () => Config
  /** Files whose change triggers a reload (config/default.yaml, CONFIG_FILE). */
  readonly watch?: readonly string[]
  /** Set in a worker process (proxy.workers > 1): the link to the cluster primary. */
  readonly cluster?: WorkerLink
  /** Where the access log's lines go (start.ts: a buffered stdout of their own); default `log`. */
  readonly accessLog?: Logger
}

export interface Gateway {
  readonly proxy: FastifyInstance
  readonly control: FastifyInstance
  readonly metrics: Metrics
  readonly postgres: PostgresStore
  readonly redis: RedisSnapshotCache
  /** Redis deciding while PostgreSQL is down: a connection of its own. */
  readonly decider: RedisDecider
  readonly limiter: Limiter
  /** The live configuration; swapped whole by reload(). */
  readonly runtime: Holder<Runtime>
  readonly overrides: OverrideStore
  /** Validates the configuration again and swaps it in; an invalid one is logged and ignored. */
  reload: (reason: string) => ReloadResult
  /** Base URLs once listening. */
  readonly proxyUrl: string
  readonly controlUrl: string
  close: () => Promise<void>
}

/** The longest start-up waits for a re-seed of Redis (src/limiter/reseed.ts). */
const RESEED_WAIT_MS = 5_000

const RESTART_ONLY = (Object.keys(RELOAD) as Array<keyof Config>).filter((section) => RELOAD[section] === 'restart')

/** fallback.takeoverFenceMs, or the longest a PostgreSQL allowance takes from cache read to snapshot write: the wait for a batch slot and the answer (each at most the decision deadline), then the write (its wait for a read to travel with, and its round trip). */
function takeoverFence (config: Config): number {
  return config.fallback.takeoverFenceMs ?? 2 * config.postgres.decisionTimeoutMs + SNAPSHOT_WRITE_HOLD_MS + config.redis.commandTimeoutMs + 100
}

export async function startGateway (config: Config, log: Logger, options: GatewayOptions = {}): Promise<Gateway> {
  const life = new Lifecycle(log)
  const metrics = new Metrics()
  try {
    const postgres = life.add('postgres', new PostgresStore(config.postgres, log, metrics), async (p) => await p.close())
    const redisHealth = new StoreHealth('redis', log, metrics)
    const redis = life.add('redis', new RedisSnapshotCache(config.redis, redisHealth, metrics), async (r) => await r.close())
    const decider = life.add('redis decider', new RedisDecider(config.redis, config.fallback.redisTimeoutMs, redisHealth, metrics, takeoverFence(config)), async (d) => await d.close())
    const overrides = life.add('overrides', new OverrideStore(postgres, log), async (o) => await o.close())
    let postgresMissing: unknown = null
    try {
      await postgres.start(config.postgres.migrate)
    } catch (err) {
      if (config.postgres.requiredAtStart || !isUnreachable(err)) throw err
      postgresMissing = err
    }
    await redis.start()
    decider.start()
    if (postgresMissing === null) await overrides.start()

    let upstreamUrl = config.proxy.upstreamUrl
    if (upstreamUrl === undefined) {
      const echo = life.add('echo upstream', await startEchoUpstream(), async (e) => await e.close())
      upstreamUrl = echo.url
      log.info({ upstream: upstreamUrl }, 'no UPSTREAM_URL set: started the built-in echo upstream')
    }

    const defaultUpstream = upstreamUrl
    const runtime = new Holder(buildRuntime(config, defaultUpstream, 1))
    const initPolicies = (rt: Runtime): void => { for (const p of rt.policies.policies.values()) metrics.initPolicy(p.name, p.shadow) }
    initPolicies(runtime.current)
    // Write-behind mode (docs/design.md): Redis decides, PostgreSQL is written behind. Without
    // Redis there is nothing to decide in, and write-behind policies are decided strictly.
    const sync = config.redis.enabled
      ? new WriteBehindSync({ ledger: new PostgresLedger(postgres, metrics, { maxInFlight: Math.min(config.postgres.poolSize, config.postgres.batchMaxInFlight), maxSize: config.postgres.batchMaxSize }),
        intervalMs: () => runtime.current.config.limits.syncIntervalMs, metrics, log })
      : null
    if (sync === null && [...runtime.current.policies.policies.values()].some((p) => p.consistency === 'write-behind')) {
      log.warn('write-behind policies are decided strictly: Redis is disabled (REDIS_ENABLED=false)')
    }
    const writeBehind = sync === null ? undefined : { redis: new RedisWriteBehind(() => decider.client, config.redis.keyPrefix, redisHealth, metrics, () => runtime.current.config.limits.writeBehindKeyTtlSeconds,
      (operation, work) => decider.bounded(operation, work)), ledger: sync.ledger, sync }
    const limiter = life.add('limiter', new Limiter({ store: postgres, cache: redis, redis: decider, ...(writeBehind === undefined ? {} : { writeBehind }) },
      { fallback: config.fallback, localDenyCache: config.localDenyCache, metrics, log }), async (l) => await l.close())
    // Closed after the listeners (no more decisions) and before PostgreSQL: a graceful
    // shutdown writes the pending write-behind state once.
    if (sync !== null) life.add('write-behind sync', sync, async (s) => await s.close()).start()
    if (postgresMissing !== null) {
      log.warn({ err: postgresMissing }, 'PostgreSQL does not answer at start-up: starting without it (postgres.requiredAtStart: false); ' +
        'Redis or the fail mode decides until it answers, then migrations run and the buckets are handed back')
      limiter.startWithoutPostgres(async () => {
        await postgres.prepare(config.postgres.migrate)
        await overrides.start()
      }, postgresMissing)
    }
    if (config.redis.enabled) {
      // A Redis restarted empty gets PostgreSQL's spent buckets back before it may take one over.
      // Start-up waits for the first check (one Redis call when the marker is there) and a
      // re-seed it starts, for RESEED_WAIT_MS at most; a longer one finishes while serving.
      const reseed = life.add('re-seed', new Reseed(postgres, redis, {
        policies: () => [...runtime.current.policies.policies.values()].filter((p) => p.concurrency === undefined && p.consistency !== 'write-behind'),
        effective: (p, userId) => overrides.table.apply(p, userId),
        owner: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`,
        checkMs: config.redis.reseedCheckMs,
        metrics,
        log
      }), (r) => { r.close() })
      let timer: NodeJS.Timeout | undefined
      await Promise.race([reseed.start(), new Promise<void>((resolve) => { timer = setTimeout(resolve, RESEED_WAIT_MS) })])
      clearTimeout(timer)
    }
    const concurrency = life.add('concurrency slots', new ConcurrencyLimiter(new RedisLeases(redis.client, config.redis.keyPrefix, metrics),
      config.redis.leaseMs, config.fallback.localReplicas, metrics), (c) => { c.close() })
    const control = life.add('control listener', await buildControl({ config, limiter, store: postgres, cache: redis, metrics, log, runtime, overrides, ...(options.cluster === undefined ? {} : { cluster: options.cluster }) }), async (c) => await c.close())
    const proxy = life.add('proxy listener', await buildProxy({ config, limiter, concurrency, metrics, log, accessLog: options.accessLog ?? log, runtime, overrides }), async (p) => await p.close())

    const reload = (reason: string): ReloadResult => {
      if (options.loadConfig === undefined) return { ok: false, error: 'no configuration source to reload from' }
      let next: Runtime
      try {
        const fresh = options.loadConfig()
        next = buildRuntime(fresh, defaultUpstream, runtime.current.policies.generation + 1)
      } catch (err) {
        const error = (err as Error).message
        metrics.configReloads.inc({ result: 'rejected' })
        log.error({ reason, error }, 'configuration reload rejected; the current configuration stays')
        return { ok: false, error }
      }
      const fixed = RESTART_ONLY.filter((section) => JSON.stringify(next.config[section]) !== JSON.stringify(config[section]))
      if (fixed.length > 0) log.warn({ sections: fixed }, 'changed settings in these sections take effect only after a restart')
      const fallback = next.config.fallback
      if (JSON.stringify(fallback) !== JSON.stringify(runtime.current.config.fallback)) {
        limiter.reconfigure(fallback)
        concurrency.reconfigure(fallback.localReplicas)
        decider.setTimeout(fallback.redisTimeoutMs)
        decider.setFence(takeoverFence(next.config))
        log.info({ reason, fallback }, 'fail-over settings applied')
      }
      reloadCertificate(reason)
      initPolicies(next)
      runtime.swap(next)
      metrics.configReloads.inc({ result: 'applied' })
      log.info({ reason, generation: next.policies.generation, policies: [...next.policies.policies.keys()] }, 'configuration reloaded')
      return { ok: true, generation: next.policies.generation }
    }
    // A renewed certificate at the same paths is picked up by a reload: new connections get it,
    // open ones keep theirs. A file that cannot be read or parsed leaves the current one in use.
    const reloadCertificate = (reason: string): void => {
      try {
        const tls = readTlsFiles(config.proxy)
        if (tls === null) return
        (proxy.server as unknown as HttpsServer).setSecureContext(tls)
        log.info({ reason, cert: config.proxy.tlsCertFile }, 'TLS certificate reloaded')
      } catch (err) {
        log.error({ reason, error: (err as Error).message }, 'TLS certificate reload failed; the current certificate stays')
      }
    }
    if (options.watch !== undefined && options.watch.length > 0) {
      // Closed first: no reload may start while the rest shuts down.
      life.add('file watch', watchFiles(options.watch, (path) => { reload(`file changed: ${path}`) }), (unwatch) => unwatch())
    }

    await control.listen({ port: config.control.port, host: config.control.host })
    await proxy.listen({ port: config.proxy.port, host: config.proxy.host })
    const proxyPort = (proxy.server.address() as AddressInfo).port
    const controlPort = (control.server.address() as AddressInfo).port
    if (options.cluster === undefined) {
      log.info({ port: proxyPort, control_port: controlPort, control_host: config.control.host }, `Starting server on :${proxyPort}`)
    } else {
      // The primary logs "Starting server on" once every worker serves.
      options.cluster.attach({
        readiness: async () => await localReadiness({ config, limiter, store: postgres, cache: redis }),
        forget: (cacheName, key) => { limiter.forget(cacheName, key) },
        reload: (reason) => { reload(reason) },
        metrics
      })
      options.cluster.listening(proxyPort, controlPort)
      log.info({ port: proxyPort, control_port: controlPort }, 'worker serving')
    }

    return {
      proxy,
      control,
      metrics,
      postgres,
      redis,
      decider,
      limiter,
      runtime,
      overrides,
      reload,
      proxyUrl: `${config.proxy.tlsCertFile === undefined ? 'http' : 'https'}://127.0.0.1:${proxyPort}`,
      controlUrl: `http://${config.control.host === '0.0.0.0' ? '127.0.0.1' : config.control.host}:${controlPort}`,
      close: async () => { await life.close() }
    }
  } catch (err) {
    // Whatever started before the failure (a port already in use, an unreadable certificate)
    // is stopped, so a caller that catches this is left with nothing running.
    await life.close()
    throw err
  }
}
