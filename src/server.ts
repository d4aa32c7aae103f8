/**
 * Wires one gateway: stores, limiter, the proxy and control listeners. main.ts adds process
 * concerns (signals, exit codes); tests use this directly.
 */
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { Config } from './config/schema.ts'
import type { Logger } from './observability/log.ts'
import { Metrics } from './observability/metrics.ts'
import { Limiter } from './limiter/limiter.ts'
import { isUnreachable, PostgresStore } from './stores/postgres/postgres-store.ts'
import { RedisCache } from './stores/redis/snapshot-cache.ts'
import type { Server as HttpsServer } from 'node:https'
import { buildProxy, readTlsFiles } from './proxy/app.ts'
import { startEchoUpstream, type EchoUpstream } from './proxy/echo-upstream.ts'
import { buildControl } from './control/app.ts'
import { Holder } from './policy/holder.ts'
import { OverrideStore } from './stores/postgres/override-store.ts'
import { buildRuntime, type Runtime } from './admission/runtime.ts'
import { watchFiles } from './config/watch.ts'

/** Sections a running gateway cannot change: they hold listeners, pools and connections. */
const RESTART_ONLY = ['proxy', 'control', 'postgres', 'redis', 'localDenyCache', 'log'] as const

export type ReloadResult = { readonly ok: true, readonly generation: number } | { readonly ok: false, readonly error: string }

export interface GatewayOptions {
  /** Reads the configuration again for a hot reload; without it reload() refuses. */
  readonly loadConfig?: () => Config
  /** Files whose change triggers a reload (config/default.yaml, CONFIG_FILE). */
  readonly watch?: readonly string[]
}

export interface Gateway {
  readonly proxy: FastifyInstance
  readonly control: FastifyInstance
  readonly metrics: Metrics
  readonly postgres: PostgresStore
  readonly redis: RedisCache
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

export async function startGateway (config: Config, log: Logger, options: GatewayOptions = {}): Promise<Gateway> {
  const metrics = new Metrics()
  const postgres = new PostgresStore(config.postgres, log, metrics)
  const redis = new RedisCache(config.redis, log, metrics)
  const overrides = new OverrideStore(postgres.sql, log)
  let echo: EchoUpstream | undefined
  const started: { limiter?: Limiter, proxy?: FastifyInstance, control?: FastifyInstance } = {}
  let unwatch = (): void => {}
  try {
    let postgresMissing: unknown = null
    try {
      await postgres.start(config.postgres.migrate)
    } catch (err) {
      if (config.postgres.requiredAtStart || !isUnreachable(err)) throw err
      postgresMissing = err
    }
    await redis.start()
    if (postgresMissing === null) await overrides.start()

    let upstreamUrl = config.proxy.upstreamUrl
    if (upstreamUrl === undefined) {
      echo = await startEchoUpstream()
      upstreamUrl = echo.url
      log.info({ upstream: upstreamUrl }, 'no UPSTREAM_URL set: started the built-in echo upstream')
    }

    const defaultUpstream = upstreamUrl
    const runtime = new Holder(buildRuntime(config, defaultUpstream, 1))
    const initPolicies = (rt: Runtime): void => { for (const p of rt.policies.policies.values()) metrics.initPolicy(p.name, p.shadow) }
    initPolicies(runtime.current)
    const limiter = started.limiter = new Limiter({ postgres, redis }, metrics, log, config)
    if (postgresMissing !== null) {
      log.warn({ err: postgresMissing }, 'PostgreSQL does not answer at start-up: starting without it (postgres.requiredAtStart: false); ' +
        'Redis or the fail mode decides until it answers, then migrations run and the buckets are handed back')
      limiter.failover.startWithoutPostgres(async () => {
        await postgres.prepare(config.postgres.migrate)
        await overrides.start()
      })
    }
    const proxy = started.proxy = await buildProxy({ config, limiter, metrics, log, runtime, overrides })
    const control = started.control = await buildControl({ config, limiter, postgres, redis, metrics, log, runtime, overrides })

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
      unwatch = watchFiles(options.watch, (path) => { reload(`file changed: ${path}`) })
    }

    await control.listen({ port: config.control.port, host: config.control.host })
    await proxy.listen({ port: config.proxy.port, host: config.proxy.host })
    const proxyPort = (proxy.server.address() as AddressInfo).port
    const controlPort = (control.server.address() as AddressInfo).port
    log.info({ port: proxyPort, control_port: controlPort, control_host: config.control.host }, `Starting server on :${proxyPort}`)

    let closing: Promise<void> | undefined
    return {
      proxy,
      control,
      metrics,
      postgres,
      redis,
      limiter,
      runtime,
      overrides,
      reload,
      proxyUrl: `${config.proxy.tlsCertFile === undefined ? 'http' : 'https'}://127.0.0.1:${proxyPort}`,
      controlUrl: `http://${config.control.host === '0.0.0.0' ? '127.0.0.1' : config.control.host}:${controlPort}`,
      close: () => {
        closing ??= (async () => {
          // Stop accepting and let in-flight requests finish before the stores go away.
          unwatch()
          await proxy.close()
          await control.close()
          await echo?.close()
          await limiter.close()
          await redis.close()
          await overrides.close()
          await postgres.close()
        })()
        return closing
      }
    }
  } catch (err) {
    // Whatever started before the failure (a port already in use, an unreadable certificate)
    // is stopped, so a caller that catches this is left with nothing running.
    unwatch()
    await started.proxy?.close().catch(() => {})
    await started.control?.close().catch(() => {})
    await started.limiter?.close().catch(() => {})
    await echo?.close()
    await overrides.close().catch(() => {})
    await redis.close().catch(() => {})
    await postgres.close().catch(() => {})
    throw err
  }
}
