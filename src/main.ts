/** Process entry point: configuration, logging, start-up, signals, exit codes. */
import closeWithGrace from 'close-with-grace'
import { ConfigError, loadConfig } from './config/load.ts'
import { prepareFirstRun } from './first-run.ts'
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

  let gateway
  let firstRun
  try {
    firstRun = await prepareFirstRun(config, process.env, log)
    gateway = await startGateway(firstRun.config, log)
  } catch (err) {
    await firstRun?.close().catch(() => {})
    log.fatal({ err }, `could not start: ${(err as Error).message}`)
    process.exit(1)
  }

  closeWithGrace({ delay: 25_000 }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: finishing in-flight requests')
    await gateway.close()
    await firstRun.close()
    log.info('shutdown complete')
  })
}

void main()
