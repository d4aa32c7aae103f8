/** `npm run migrate`: apply pending migrations to DATABASE_URL and exit. */
import postgres from 'postgres'
import { ConfigError, loadConfig } from '../config/load.ts'
import { migrate } from '../stores/postgres/migrate.ts'

try {
  const config = loadConfig()
  const sql = postgres(config.postgres.url, { max: 1, prepare: config.postgres.prepare, connect_timeout: config.postgres.connectTimeoutSeconds, onnotice: () => {} })
  try {
    const applied = await migrate(sql)
    process.stdout.write(applied.length > 0 ? `applied: ${applied.join(', ')}\n` : 'already up to date\n')
  } finally {
    await sql.end()
  }
} catch (err) {
  process.stderr.write(`migrate: ${err instanceof ConfigError ? err.message : (err as Error).message}\n`)
  process.exitCode = err instanceof ConfigError ? 2 : 1
}
