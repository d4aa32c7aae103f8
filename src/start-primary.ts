/**
 * Running the gateway as a cluster primary (proxy.workers > 1): check what only a primary can,
 * apply the migrations once, fork the workers (src/workers/primary.ts), and turn signals into
 * orders for every worker. Exit codes as for one process: 1 when it could not start, 0 after a
 * graceful stop.
 */
import { packageVersion } from './core/package.ts'
import type { Config } from './config/schema.ts'
import { WorkerStartError } from './core/errors.ts'
import { planFirstRun } from './first-run.ts'
import { createLogger } from './observability/log.ts'
import { migrateDatabase } from './stores/postgres/migrate-database.ts'
import { isUnreachable } from './stores/postgres/postgres-store.ts'
import { Primary } from './workers/primary.ts'

export async function runPrimary (config: Config, summary: Record<string, unknown>, count: number): Promise<void> {
  const log = createLogger(config.log.level, undefined, { role: 'primary', pid: process.pid })
  log.info('Logger initialized successfully')
  log.info({ ...summary, workers: count }, `ratelimit-gateway ${packageVersion()} starting`)
  const fail = (err: unknown): never => {
    log.fatal({ err }, `could not start: ${(err as Error).message}`)
    process.exit(1)
  }

  // The embedded PostgreSQL is one process's files: several workers cannot share it.
  const plan = await planFirstRun(config, process.env)
  if (plan.embeddedPostgres) {
    fail(new WorkerStartError(`proxy.workers is ${count} (WORKERS), but there is no PostgreSQL server (${plan.reason}) and the embedded one serves a single process: set DATABASE_URL, or WORKERS=1`))
  }

  // Once, here, before any worker opens a pool: the workers then start on a migrated schema.
  let migrated = !config.postgres.migrate
  if (config.postgres.migrate) {
    try {
      const applied = await migrateDatabase(config.postgres)
      if (applied.length > 0) log.info({ applied }, 'migrations applied')
      migrated = true
    } catch (err) {
      if (config.postgres.requiredAtStart || !isUnreachable(err)) {
        const hint = isUnreachable(err) ? ' (PostgreSQL does not answer; DATABASE_REQUIRED_AT_START=false starts the gateway without it, Redis or the fail mode deciding until it answers)' : ''
        log.fatal({ err }, `could not start: ${(err as Error).message}${hint}`)
        process.exit(1)
      }
      log.warn({ err }, 'PostgreSQL does not answer at start-up: the workers apply the migrations once it does (under the advisory lock)')
    }
  }

  const primary = new Primary({ count, migrated, log })
  process.on('SIGHUP', () => {
    log.info({ workers: count }, 'SIGHUP: every worker reloads its configuration')
    primary.reload('SIGHUP (relayed by the primary)')
  })
  const stop = (signal: string): void => {
    log.info({ signal }, 'shutting down: every worker finishes its in-flight requests')
    void primary.stop().then((code) => {
      log.info({ exit_code: code }, 'shutdown complete')
      process.exit(code)
    })
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  // A second Ctrl-C while draining is already handled by the workers' own grace period.
  process.on('SIGINT', () => {})

  try {
    const up = await primary.start()
    log.info({ port: up.port, control_port: up.controlPort, control_host: config.control.host, workers: count, pids: up.pids }, `Starting server on :${up.port}`)
  } catch (err) {
    log.fatal({ err }, `could not start: ${(err as Error).message}`)
    await primary.stop()
    process.exit(1)
  }
}
