/** `npm run migrate`: apply pending migrations to DATABASE_URL and exit (also `ratelimit-gateway migrate`). */
import { runMigrate } from './cli.ts'

process.exitCode = await runMigrate()
