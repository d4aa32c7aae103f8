/** Process entry point: configuration, logging, start-up, signals, exit codes. */
import closeWithGrace from 'close-with-grace'
import { join, resolve } from 'node:path'
import { ConfigError, loadConfig, packageRoot } from './config/load.ts'
import { createLogger } from './log.ts'
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
  // SIGHUP reloads the configuration (the default action would end the process).
  process.on('SIGHUP', () => {
    if (gateway === undefined) log.warn('SIGHUP during start-up ignored; send it again once the gateway is listening')
    else gateway.reload('SIGHUP')
  })
  try {
    // Hot reload re-reads the same sources: config/default.yaml, CONFIG_FILE, the environment.
    const watch = [join(packageRoot(), 'config', 'default.yaml')]
    if (process.env.CONFIG_FILE) watch.push(resolve(process.env.CONFIG_FILE))
    gateway = await startGateway(config, log, { loadConfig: () => loadConfig(), watch })
  } catch (err) {
    log.fatal({ err }, `could not start: ${(err as Error).message}`)
    process.exit(1)
  }

  const running = gateway
  closeWithGrace({ delay: 25_000, skip: ['SIGHUP'] }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: finishing in-flight requests')
    await running.close()
    log.info('shutdown complete')
  })
}

void main()
