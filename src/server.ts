/**
 * Wires one gateway: stores, limiter, the proxy and control listeners. main.ts adds process
 * concerns (signals, exit codes); tests use this directly.
 */
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { Config } from './config/schema.ts'
import type { Policy } from './domain.ts'
import type { Logger } from './log.ts'
import { Metrics } from './metrics.ts'
import { Limiter } from './limiter/limiter.ts'
import { PostgresStore } from './stores/postgres.ts'
import { RedisCache } from './stores/redis.ts'
import { buildProxy } from './gateway/app.ts'
import { startEchoUpstream, type EchoUpstream } from './gateway/echo-upstream.ts'
import { buildControl } from './control/app.ts'

export interface Gateway {
  readonly proxy: FastifyInstance
  readonly control: FastifyInstance
  readonly metrics: Metrics
  readonly postgres: PostgresStore
  readonly redis: RedisCache
  readonly limiter: Limiter
  /** Base URLs once listening. */
  readonly proxyUrl: string
  readonly controlUrl: string
  close: () => Promise<void>
}

export async function startGateway (config: Config, log: Logger): Promise<Gateway> {
  const metrics = new Metrics()
  const postgres = new PostgresStore(config.postgres, log, metrics)
  const redis = new RedisCache(config.redis, log, metrics)
  let echo: EchoUpstream | undefined
  try {
    await postgres.start(config.postgres.migrate)
    await redis.start()

    let upstreamUrl = config.proxy.upstreamUrl
    if (upstreamUrl === undefined) {
      echo = await startEchoUpstream()
      upstreamUrl = echo.url
      log.info({ upstream: upstreamUrl }, 'no UPSTREAM_URL set: started the built-in echo upstream')
    }

    const defaultPolicy: Policy = { name: 'default', capacity: config.limits.capacity, refillPerSecond: config.limits.refillPerSecond }
    const policies = new Map([[defaultPolicy.name, defaultPolicy]])
    const limiter = new Limiter({ postgres, redis }, metrics, log, config.fallback)
    const cost = config.limits.cost
    const proxy = await buildProxy({ config, upstreamUrl, limiter, metrics, log, policyFor: () => ({ policy: defaultPolicy, cost }) })
    const control = await buildControl({ config, limiter, postgres, redis, metrics, log, policies, defaultPolicy })

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
      proxyUrl: `http://127.0.0.1:${proxyPort}`,
      controlUrl: `http://${config.control.host === '0.0.0.0' ? '127.0.0.1' : config.control.host}:${controlPort}`,
      close: () => {
        closing ??= (async () => {
          // Stop accepting and let in-flight requests finish before the stores go away.
          await proxy.close()
          await control.close()
          await echo?.close()
          await limiter.close()
          await redis.close()
          await postgres.close()
        })()
        return closing
      }
    }
  } catch (err) {
    await echo?.close()
    await redis.close().catch(() => {})
    await postgres.close().catch(() => {})
    throw err
  }
}
