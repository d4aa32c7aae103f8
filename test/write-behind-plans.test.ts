// The write-behind statements' cost must not grow with the number of callers PostgreSQL holds:
// a flush or a load of many keys finds each row by its primary key, never by reading the whole
// table. Checked on the plan PostgreSQL chooses for the exact statement the gateway sends, on a
// table of 50,000 callers, and the statements still do their work.
import t from 'tap'
import postgres, { type Sql } from 'postgres'
import { migrate } from '../src/stores/postgres/migrate.ts'
import { loadStatement, syncStatement } from '../src/stores/postgres/write-behind-ledger.ts'
import { makeLimitPolicy } from '../src/policy/policy-set.ts'
import { createTestDatabase } from './helpers/stores.ts'

interface Sent { query: string, parameters: unknown[] }

/** The scans of rate_limits in a JSON plan, by node type. */
function scansOfRateLimits (plan: Record<string, unknown>, out: string[] = []): string[] {
  if (plan['Relation Name'] === 'rate_limits') out.push(String(plan['Node Type']))
  for (const child of (plan.Plans as Array<Record<string, unknown>> | undefined) ?? []) scansOfRateLimits(child, out)
  return out
}

t.test('a flush and a load of 600 keys probe the primary key of a 50,000-row table, and do their work', async (t) => {
  const url = await createTestDatabase(t, 'gwplans')
  let last: Sent | null = null
  const sql: Sql = postgres(url, { max: 1, onnotice: () => {}, debug: (_c, query, parameters) => { last = { query, parameters } } })
  t.teardown(async () => { await sql.end() })
  await migrate(sql)
  await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time)
    SELECT 'default', 'u' || g, 10, clock_timestamp() FROM generate_series(0, 49999) AS g`
  await sql`ANALYZE rate_limits`
  const policy = makeLimitPolicy('default', 10, 1, 1, false)
  const keys = Array.from({ length: 600 }, (_, i) => `u${(i * 83) % 50_000}`)
  const explain = async (sent: Sent): Promise<string[]> => {
    const [row] = await sql.unsafe(`EXPLAIN (FORMAT JSON) ${sent.query}`, sent.parameters as never[])
    return scansOfRateLimits((row!['QUERY PLAN'] as Array<{ Plan: Record<string, unknown> }>)[0]!.Plan)
  }

  await syncStatement(sql, keys.map((userId) => ({ policy, userId, tokens: 3, ageMs: 0 }))).execute()
  const flush = await explain(last!)
  t.ok(flush.length > 0, `the flush plan reads rate_limits (${flush.join(', ')})`)
  t.notOk(flush.includes('Seq Scan'), 'the flush reads no row it does not flush')
  const [lowered] = await sql`SELECT count(*)::int AS n, max(tokens) AS top FROM rate_limits WHERE user_id = ANY(${keys})`
  t.same(lowered, { n: 600, top: 3 }, 'every flushed row lowered to the flushed state')

  const loaded = await loadStatement(sql, [...keys, 'nobody'].map((userId) => ({ policy, userId, cost: 1 }))).execute()
  const load = await explain(last!)
  t.notOk(load.includes('Seq Scan'), `the load reads no row it does not load (${load.join(', ')})`)
  t.equal(loaded.length, 601, 'one answer per key')
  t.equal(loaded.find((r) => r.o_idx === 601)!.o_tokens, null, 'a caller without a row is new')
  t.ok(loaded.filter((r) => r.o_idx <= 600).every((r) => Number(r.o_tokens) >= 3 && Number(r.o_tokens) < 4), 'the others read back as flushed, refilled to now')
})
