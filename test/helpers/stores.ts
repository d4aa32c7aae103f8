/**
 * Per-test PostgreSQL databases and Redis key prefixes on the machine's shared servers.
 * Each test gets its own database (dropped at teardown) and its own key prefix (deleted at
 * teardown), so test files can run in parallel and leave the shared servers as they were.
 */
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import postgres from 'postgres'

export const ADMIN_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

interface Teardown { teardown: (fn: () => unknown) => void }

export function uniqueName (prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`
}

/** Creates an empty database and returns its URL; dropped when the test ends. */
export async function createTestDatabase (t: Teardown, prefix = 'gwtest'): Promise<string> {
  const name = uniqueName(prefix)
  const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${name}`)
  await admin.end()
  t.teardown(async () => {
    const sql = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} })
    await sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await sql.end()
  })
  const url = new URL(ADMIN_DATABASE_URL)
  url.pathname = '/' + name
  return url.toString()
}

/** A fresh Redis key prefix; every key under it is deleted when the test ends. */
export function createRedisPrefix (t: Teardown, redisUrl = TEST_REDIS_URL): string {
  const prefix = uniqueName('t') + ':'
  t.teardown(async () => {
    const client = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null })
    client.on('error', () => {})
    try {
      await client.connect()
      let cursor = '0'
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', prefix + '*', 'COUNT', 1000)
        cursor = next
        if (keys.length > 0) await client.del(...keys)
      } while (cursor !== '0')
    } catch {
      // a test that points at a dead Redis leaves nothing behind
    } finally {
      client.disconnect()
    }
  })
  return prefix
}
