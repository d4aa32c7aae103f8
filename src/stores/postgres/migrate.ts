/**
 * Applies migrations/NNN_*.sql in order, each once, recorded in schema_migrations.
 * Several gateways starting together serialise on an advisory lock, so exactly one applies
 * each migration and the others see it done.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Sql } from 'postgres'
import { packageRoot } from '../../core/package.ts'

/** Arbitrary constant shared by every gateway: "ratelimit migrations". */
const LOCK_ID = 7_240_315_001

export interface Migration { readonly version: string, readonly sql: string }

export function readMigrations (dir = join(packageRoot(), 'migrations')): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d+_.+\.sql$/.test(f))
    .sort()
    .map((f) => ({ version: f.replace(/\.sql$/, ''), sql: readFileSync(join(dir, f), 'utf8') }))
}

/** The versions among `migrations` the database has not applied (all of them on a new database). */
export async function pendingMigrations (sql: Sql, migrations = readMigrations()): Promise<string[]> {
  const [table] = await sql<Array<{ present: boolean }>>`SELECT to_regclass('schema_migrations') IS NOT NULL AS present`
  const done = new Set(table?.present === true ? (await sql<Array<{ version: string }>>`SELECT version FROM schema_migrations`).map((r) => r.version) : [])
  return migrations.map((m) => m.version).filter((v) => !done.has(v))
}

/** Returns the versions applied by this call (empty when already up to date). */
export async function migrate (sql: Sql, migrations = readMigrations()): Promise<string[]> {
  return await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${LOCK_ID})`
    await tx`CREATE TABLE IF NOT EXISTS schema_migrations (
      version text PRIMARY KEY,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`
    const done = new Set((await tx<{ version: string }[]>`SELECT version FROM schema_migrations`).map((r) => r.version))
    const applied: string[] = []
    for (const m of migrations) {
      if (done.has(m.version)) continue
      await tx.unsafe(m.sql)
      await tx`INSERT INTO schema_migrations (version) VALUES (${m.version})`
      applied.push(m.version)
    }
    return applied
  })
}
