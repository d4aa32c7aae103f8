// PostgreSQL at scale: the hash-partitioned table of docs/sql/partitioned.sql, applied under a
// running gateway, and a real PgBouncer in transaction mode between the gateway and PostgreSQL.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import t from 'tap'
import { packageRoot } from '../src/core/package.ts'
import { burst as burstScenario } from '../scripts/scenarios-lib.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { burst, waitFor } from './helpers/http.ts'
import { createTestDatabase } from './helpers/stores.ts'
import { freePort } from './helpers/private-stores.ts'

const allowed = (replies: Array<{ status: number }>): number => replies.filter((r) => r.status === 201).length

t.test('hash-partitioned rate_limits (docs/sql/partitioned.sql)', async (t) => {
  const db = await createTestDatabase(t)
  // A slow refill keeps the buckets where the test left them while the table is rebuilt.
  const gw = await startTestGateway(t, { databaseUrl: db, config: { limits: { capacity: 10, refillPerSecond: 0.01 } } })
  t.equal(allowed(await burst(gw.proxyUrl + '/x', 'before-1', 12)), 10, 'a bucket spent before partitioning')

  const admin = postgres(db, { max: 1, onnotice: () => {} })
  t.teardown(() => admin.end())
  const script = readFileSync(join(packageRoot(), 'docs', 'sql', 'partitioned.sql'), 'utf8')
  // Traffic keeps flowing while the table is swapped: requests wait for the lock, none fails.
  const during = Promise.all(Array.from({ length: 5 }, (_, i) => burst(gw.proxyUrl + '/x', `during-${i}`, 12)))
  await admin.unsafe(script)
  const duringReplies = await during
  t.same(duringReplies.map(allowed), [10, 10, 10, 10, 10], 'requests during the swap: exactly 10 of 12 allowed per key, none failed')

  const [table] = await admin<Array<{ relkind: string, parts: number }>>`
    SELECT c.relkind, (SELECT count(*)::int FROM pg_inherits i WHERE i.inhparent = c.oid) AS parts
    FROM pg_class c WHERE c.oid = 'rate_limits'::regclass`
  t.same(table, { relkind: 'p', parts: 16 }, 'rate_limits is hash-partitioned into 16')
  const kept = await gw.postgres.peek('default', 'before-1')
  t.ok(kept.snapshot !== null && kept.snapshot.tokens < 1, `rows were copied (before-1 has ${kept.snapshot?.tokens} tokens)`)

  const users = Array.from({ length: 6 }, (_, i) => `after-${i}`)
  const results = await Promise.all(users.map((u) => burst(gw.proxyUrl + '/x', u, 40)))
  t.same(results.map(allowed), users.map(() => 10), '40 concurrent on fresh keys: exactly 10 allowed each, on the partitioned table')
  const b = await burstScenario(gw.proxyUrl + '/', 'after-burst')
  for (const e of b.expectations) t.ok(e.ok, `burst: ${e.what} (expected ${e.expected}, got ${e.actual})`)

  const spread = await admin<Array<{ part: string }>>`SELECT DISTINCT tableoid::regclass::text AS part FROM rate_limits`
  t.ok(spread.length > 1, `buckets spread over ${spread.length} partitions`)
  await t.rejects(admin.unsafe(script), /already partitioned/, 'refuses to run twice')
})


const PGBOUNCER = ['/usr/sbin/pgbouncer', 'pgbouncer'].find((p) => spawnSync(p, ['--version']).status === 0)

t.test('behind PgBouncer in transaction mode (DATABASE_PREPARE=false)', async (t) => {
  if (PGBOUNCER === undefined) {
    t.fail('pgbouncer is not installed: apt-get install pgbouncer (.ci/setup.d/deploy-tools.sh installs it)')
    return
  }
  const db = await createTestDatabase(t)
  const target = new URL(db)
  const dir = mkdtempSync(join(tmpdir(), 'rl-pgbouncer-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  // PgBouncer refuses to run as root: it runs as the postgres user, like the throwaway clusters.
  const ini = join(dir, 'pgbouncer.ini')
  writeFileSync(ini, [
    '[databases]',
    `* = host=${target.hostname} port=${target.port || 5432}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = trust',
    `auth_file = ${join(dir, 'userlist.txt')}`,
    'pool_mode = transaction',
    // Fewer server connections than the gateway's pool: connections really are shared.
    'default_pool_size = 3',
    'max_client_conn = 100',
    // postgres.js sends statement_timeout as a startup parameter (docs/scale-out.md).
    'ignore_startup_parameters = statement_timeout',
    ''
  ].join('\n'))
  writeFileSync(join(dir, 'userlist.txt'), '"postgres" ""\n')
  chmodSync(dir, 0o755)
  for (const f of [dir, ini, join(dir, 'userlist.txt')]) chownSync(f, uid('postgres'), gid('postgres'))
  const bouncer = spawn(PGBOUNCER, [ini], { uid: uid('postgres'), gid: gid('postgres'), stdio: ['ignore', 'pipe', 'pipe'] })
  const output: string[] = []
  bouncer.stdout!.on('data', (c: Buffer) => output.push(c.toString()))
  bouncer.stderr!.on('data', (c: Buffer) => output.push(c.toString()))
  t.teardown(() => { if (bouncer.exitCode === null) bouncer.kill('SIGKILL') })
  const url = `postgres://postgres@127.0.0.1:${port}${target.pathname}`
  await waitFor(async () => {
    const probe = postgres(url, { max: 1, prepare: false, connect_timeout: 1, onnotice: () => {} })
    try {
      await probe`SELECT 1`
      return true
    } catch {
      if (bouncer.exitCode !== null) throw new Error('pgbouncer exited:\n' + output.join(''))
      return false
    } finally {
      await probe.end()
    }
  }, { what: 'pgbouncer', intervalMs: 100 })

  // Migrations (advisory transaction lock) and decisions, all through the bouncer.
  // A slow refill: "exactly 10" must not depend on how fast 240 requests get through 3 connections.
  const gw = await startTestGateway(t, { databaseUrl: url, config: { postgres: { prepare: false, poolSize: 10 }, limits: { capacity: 10, refillPerSecond: 0.01 } } })
  const users = Array.from({ length: 6 }, (_, i) => `bouncer-${i}`)
  const results = await Promise.all(users.map((u) => burst(gw.proxyUrl + '/x', u, 40)))
  t.same(results.map(allowed), users.map(() => 10), '40 concurrent on fresh keys: exactly 10 allowed each')
  const b = await burstScenario(gw.proxyUrl + '/', 'bouncer-burst')
  for (const e of b.expectations) t.ok(e.ok, `burst: ${e.what} (expected ${e.expected}, got ${e.actual})`)

  const direct = postgres(db, { max: 1, onnotice: () => {} })
  t.teardown(() => direct.end())
  const [row] = await direct<Array<{ n: number }>>`SELECT count(*)::int AS n FROM schema_migrations`
  t.ok(row!.n >= 3, 'the migrations were applied through the bouncer')
  const [servers] = await direct<Array<{ n: number }>>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = ${target.pathname.slice(1)} AND pid <> pg_backend_pid()`
  t.ok(servers!.n <= 3, `at most 3 server connections (pool_size) carried the gateway's pool of 10 (saw ${servers!.n})`)
})

function uid (user: string): number {
  return Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim())
}
function gid (user: string): number {
  return Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim())
}
