/** Process entry point: configuration, logging, start-up, signals, exit codes. */
import closeWithGrace from 'close-with-grace'
import { join, resolve } from 'node:path'
import { ConfigError, loadConfig } from './config/load.ts'
import { packageRoot } from './core/package.ts'
import { prepareFirstRun, type FirstRun } from './first-run.ts'
import { createLogger } from './observability/log.ts'
import { startGateway } from './server.ts'

async function main (): Promise<void> {
  let config
  try {
    config = loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ratelimit-gateway: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
  const log = createLogger(config.log.level)
  log.info('Logger initialized successfully')

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
    gateway = await startGateway(dev.config, log, { loadConfig: () => dev.apply(loadConfig()), watch })
  } catch (err) {
    await firstRun?.close().catch(() => {})
    log.fatal({ err }, `could not start: ${(err as Error).message}`)
    process.exit(1)
  }

  const running = gateway
  const stores = firstRun
  closeWithGrace({ delay: 25_000, skip: ['SIGHUP'] }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: finishing in-flight requests')
    await running.close()
    await stores.close()
    log.info('shutdown complete')
  })
}

void main()
