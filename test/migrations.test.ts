// Migrations: idempotent, safe when several gateways start at once, and an in-place upgrade
// of the original service's table. Plus the decision function itself, called directly.
import t from 'tap'
import postgres from 'postgres'
import { MigrationsMissing } from '../src/core/errors.ts'
import { migrate, pendingMigrations, readMigrations } from '../src/stores/postgres/migrate.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'
import { createTestDatabase } from './helpers/stores.ts'

type Tap = { teardown: (fn: () => unknown) => void }

async function connect (t: Tap, url?: string): Promise<postgres.Sql> {
  const sql = postgres(url ?? await createTestDatabase(t), { max: 4, onnotice: () => {} })
  t.teardown(() => sql.end())
  return sql
}

t.test('the first migration is the original table', async (t) => {
  const [first] = readMigrations()
  t.equal(first!.version, '001_create_rate_limits')
  t.match(first!.sql, /user_id VARCHAR\(255\) PRIMARY KEY,\s+tokens INT NOT NULL,\s+last_refill_time TIMESTAMP NOT NULL DEFAULT NOW\(\)/)
})

t.test('applying twice changes nothing the second time', async (t) => {
  const sql = await connect(t)
  const versions = readMigrations().map((m) => m.version)
  t.same(await migrate(sql), versions)
  t.same(await migrate(sql), [])
  const rows = await sql`SELECT version FROM schema_migrations ORDER BY version`
  t.same(rows.map((r) => r.version), versions)
})

t.test('concurrent start-ups apply each migration exactly once', async (t) => {
  const url = await createTestDatabase(t)
  const clients = await Promise.all(Array.from({ length: 4 }, () => connect(t, url)))
  const results = await Promise.all(clients.map((c) => migrate(c)))
  t.equal(results.filter((r) => r.length > 0).length, 1, 'one process applied them')
  t.equal(results.filter((r) => r.length === 0).length, 3, 'the others found them done')
})

t.test('upgrades an existing table of the original service in place', async (t) => {
  const sql = await connect(t)
  await sql.unsafe(readMigrations()[0]!.sql)
  await sql`INSERT INTO rate_limits (user_id, tokens, last_refill_time) VALUES ('old-user', 4, NOW())`
  await migrate(sql)
  const [row] = await sql`SELECT policy, user_id, tokens, pg_typeof(tokens)::text AS type FROM rate_limits`
  t.match(row, { policy: 'default', user_id: 'old-user', tokens: 4, type: 'double precision' })
})

t.test('rate_limit_decide: batches charge each key in arrival order, fractions carried', async (t) => {
  const sql = await connect(t)
  await migrate(sql)
  const decide = (users: string[], costs: number[], capacity = 3, rate = 1): Promise<Array<{ o_idx: number, o_allowed: boolean, o_tokens: number, o_created: boolean }>> =>
    sql`SELECT * FROM rate_limit_decide(${sql.array(users.map(() => 'default'))}::text[], ${sql.array(users)}::text[],
      ${sql.array(costs, 701)}::float8[], ${sql.array(users.map(() => capacity), 701)}::float8[], ${sql.array(users.map(() => rate), 701)}::float8[]) ORDER BY o_idx` as never
  const rows = await decide(['b', 'a', 'b', 'b', 'a'], [2, 1, 1, 1, 3])
  t.same(rows.map((r) => r.o_allowed), [true, true, true, false, false])
  t.same(rows.map((r) => r.o_created), [true, true, false, false, false], 'created only by the first request for each key')
  t.ok(rows[3]!.o_tokens < 0.01 && rows[3]!.o_tokens >= 0, 'b is empty')

  await sql`UPDATE rate_limits SET tokens = 0, last_refill_time = clock_timestamp() - interval '2.5 seconds' WHERE user_id = 'a'`
  const [half] = await decide(['a'], [3])
  t.equal(half!.o_allowed, false)
  t.ok(half!.o_tokens >= 2.5 && half!.o_tokens < 2.6, `2.5 s at 1/s gives 2.5 tokens (got ${half!.o_tokens})`)
  const [stored] = await sql`SELECT tokens FROM rate_limits WHERE user_id = 'a'`
  t.equal(stored!.tokens, 0, 'a refusal writes nothing')
})

t.test('postgres.migrate false: start-up checks that this version\'s migrations were applied, and names what is missing', async (t) => {
  const url = await createTestDatabase(t)
  const sql = await connect(t, url)
  const versions = readMigrations().map((m) => m.version)
  t.same(await pendingMigrations(sql), versions, 'a new database lacks them all')
  await migrate(sql)
  t.same(await pendingMigrations(sql), [])
  // An older schema: the newest migration not applied (as before an upgrade's migrate step).
  const newest = versions[versions.length - 1]!
  await sql`DELETE FROM schema_migrations WHERE version = ${newest}`
  const refused = await startTestGateway(t, { databaseUrl: url, config: { postgres: { migrate: false } } }).then(() => null, (err: unknown) => err)
  t.type(refused, MigrationsMissing, 'the gateway does not start')
  t.match((refused as Error).message, new RegExp(`lacks migration ${newest} .*npm run migrate`), 'says which, and what to run')
  t.same(await pendingMigrations(sql), [newest], 'and applies nothing itself')

  await migrate(sql)
  const gw = await startTestGateway(t, { databaseUrl: url, config: { postgres: { migrate: false } } })
  const res = await send(gw.proxyUrl + '/x', { user: 'after-migrate' })
  t.equal(res.headers.get('x-data-source'), 'new-user', 'migrated: it starts and decides')
})
