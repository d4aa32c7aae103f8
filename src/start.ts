/** Running the gateway as a process: configuration, logging, start-up, signals, exit codes. */
import closeWithGrace from 'close-with-grace'
import { join, resolve } from 'node:path'
import { ConfigError, loadConfig, loadConfigWithSources, type LoadedConfig } from './config/load.ts'
import { redactUrl } from './config/redact.ts'
import type { Config } from './config/schema.ts'
import { packageRoot, packageVersion } from './core/package.ts'
import { isUnreachable } from './stores/postgres/postgres-store.ts'
import { isConnectionFault } from './stores/postgres/connection-faults.ts'
import { prepareFirstRun, type FirstRun } from './first-run.ts'
import { bufferedStdout } from './observability/access-destination.ts'
import { createLogger } from './observability/log.ts'
import { startGateway } from './server.ts'
import { perWorker, workerCount } from './workers/count.ts'
import { WorkerLink, workerSlot } from './workers/worker.ts'
import { runPrimary } from './start-primary.ts'

/** What is about to run, in one start-up line: an operator reads the setup off the log. */
export function startupSummary (config: Config, loaded: Pick<LoadedConfig, 'files'>): Record<string, unknown> {
  return {
    version: packageVersion(),
    node: process.version,
    config_files: loaded.files,
    upstream: config.proxy.upstreamUrl === undefined ? 'built-in echo upstream' : redactUrl(config.proxy.upstreamUrl),
    upstreams: config.upstreams.map((u) => ({ prefix: u.prefix, url: redactUrl(u.url) })),
    identity: config.identity.source,
    decides: config.limits.consistency === 'write-behind' ? 'redis (write-behind)' : 'postgres',
    consistency: config.limits.consistency,
    sync_interval_ms: config.limits.syncIntervalMs,
    redis_decides_without_postgres: config.fallback.redisDecides,
    fail_mode: config.fallback.mode,
    synchronous_commit: config.postgres.synchronousCommit,
    local_deny_cache: config.localDenyCache.enabled,
    postgres: redactUrl(config.postgres.url),
    redis: config.redis.enabled ? redactUrl(config.redis.url) : 'disabled',
    proxy: `${config.proxy.host}:${config.proxy.port}${config.proxy.tlsCertFile === undefined ? '' : ' (https)'}`,
    control: `${config.control.host}:${config.control.port}`
  }
}

/** Starts the gateway and runs it until SIGTERM/SIGINT (npm start, the image, the bin). */
export async function runGateway (): Promise<void> {
  // proxy.workers > 1: the primary forks workers that run this same function (src/workers).
  let config
  let loaded: LoadedConfig
  try {
    loaded = loadConfigWithSources()
    config = loaded.config
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ratelimit-gateway: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
  const count = workerCount(config.proxy.workers)
  const slot = workerSlot()
  // proxy.workers > 1: this process becomes the cluster primary and serves nothing itself.
  if (count > 1 && slot === null) return await runPrimary(config, startupSummary(config, loaded), count)
  // A worker's lines say which worker wrote them: several processes share one stdout.
  const base = slot === null ? undefined : { role: 'worker', worker: slot, pid: process.pid }
  const log = createLogger(config.log.level, undefined, base)
  if (slot === null) log.info('Logger initialized successfully')
  // The access log's lines are buffered (access-destination.ts); what is buffered is written
  // on any exit, a crash or process.exit included.
  const accessOut = config.log.access ? bufferedStdout() : null
  const accessLog = accessOut === null ? undefined : createLogger(config.log.level, accessOut, base)
  if (accessOut !== null) process.on('exit', () => accessOut.flushSync())
  const link = slot === null ? null : new WorkerLink(log)
  // In a worker: its share of the local fail mode, and no migrations when the primary ran them.
  const asWorker = (c: Config): Config => link === null
    ? c
    : perWorker(link.migrated ? { ...c, postgres: { ...c.postgres, migrate: false } } : c, link.count)

  // A lost PostgreSQL connection's rejection that postgres.js leaves unhandled (connection-faults.ts)
  // is logged, and the gateway serves on; any other is a defect, rethrown as an uncaught exception
  // (close-with-grace, below, then shuts down with exit code 1).
  process.on('unhandledRejection', (reason) => {
    if (!isConnectionFault(reason)) throw reason
    log.warn({ err: reason }, 'a PostgreSQL connection failed while it was opening (a rejection postgres.js leaves unhandled): serving on')
  })
  let gateway: Awaited<ReturnType<typeof startGateway>> | undefined
  let firstRun: FirstRun | undefined
  // SIGHUP reloads the configuration (the default action would end the process).
  process.on('SIGHUP', () => {
    if (gateway === undefined) log.warn('SIGHUP during start-up ignored; send it again once the gateway is listening')
    else gateway.reload('SIGHUP')
  })
  try {
    // Hot reload re-reads the same sources: config/default.yaml, CONFIG_FILE, the environment.
    const watch = [join(packageRoot(), 'config', 'default.yaml')]
    if (process.env.CONFIG_FILE) watch.push(resolve(process.env.CONFIG_FILE))
    // A renewed TLS certificate (certbot and the like) is picked up without a signal.
    for (const file of [config.proxy.tlsCertFile, config.proxy.tlsKeyFile]) if (file !== undefined) watch.push(resolve(file))
    // No DATABASE_URL and no local PostgreSQL: the embedded one (src/first-run.ts).
    const dev = firstRun = await prepareFirstRun(config, process.env, log)
    if (link === null) log.info(startupSummary(dev.config, loaded), `ratelimit-gateway ${packageVersion()} starting`)
    gateway = await startGateway(asWorker(dev.config), log, { loadConfig: () => asWorker(dev.apply(loadConfig())), watch, ...(accessLog === undefined ? {} : { accessLog }), ...(link === null ? {} : { cluster: link }) })
  } catch (err) {
    await firstRun?.close().catch(() => {})
    const hint = isUnreachable(err) && (firstRun?.config ?? config).postgres.requiredAtStart
      ? ' (PostgreSQL does not answer; DATABASE_REQUIRED_AT_START=false starts the gateway without it, Redis or the fail mode deciding until it answers)'
      : ''
    log.fatal({ err }, `could not start: ${(err as Error).message}${hint}`)
    process.exit(1)
  }

  const running = gateway
  const stores = firstRun
  // A worker is stopped by its primary (the 'shutdown' message, or SIGTERM sent to it alone);
  // SIGINT is the terminal's Ctrl-C, which reaches the primary too: it orders the shutdown.
  // closeWithGrace would take a second signal (the primary's order after the terminal's) as
  // "exit now" and cut the in-flight requests off.
  const workerSignals = ['SIGINT', 'SIGTERM'] as const
  const graceful = closeWithGrace({ delay: 25_000, skip: ['SIGHUP' as const, 'unhandledRejection' as const, ...(link === null ? [] : workerSignals)] }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal: signal ?? 'primary' }, 'shutting down: finishing in-flight requests')
    await running.close()
    await stores.close()
    accessOut?.flushSync()
    log.info('shutdown complete')
  })
  if (link !== null) {
    let stopping = false
    const stop = (): void => {
      if (stopping) return
      stopping = true
      void graceful.close()
    }
    link.onShutdown(stop)
    process.on('SIGTERM', stop)
    process.on('SIGINT', () => {})
  }
}
