/**
 * Migrations applied once, on a connection of their own, before any gateway process of this
 * host opens a pool: the cluster primary (proxy.workers > 1) runs this, so its workers start on
 * a migrated schema instead of queueing on the advisory lock one after the other.
 */
import postgres from 'postgres'
import type { Config } from '../../config/schema.ts'
import { withDeadline } from '../deadline.ts'
import { migrate } from './migrate.ts'

/** Applies pending migrations; resolves with the versions applied. Throws like PostgresStore.start. */
export async function migrateDatabase (config: Config['postgres']): Promise<string[]> {
  const sql = postgres(config.url, { max: 1, prepare: config.prepare, fetch_types: false, connect_timeout: config.connectTimeoutSeconds, onnotice: () => {} })
  try {
    return await withDeadline(migrate(sql), config.startTimeoutMs, 'postgres',
      'migrations (postgres.startTimeoutMs, DATABASE_START_TIMEOUT_MS; another gateway may hold the migration lock)', () => {})
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {})
  }
}
