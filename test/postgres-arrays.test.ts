// The gateway's array parameters (src/stores/postgres/arrays.ts) are literals it builds itself,
// so its pools need no array-type query per connection (postgres.js's fetch_types, whose dropped
// promise could stop a gateway). Read back through a real PostgreSQL, every value must arrive
// as it was: user ids with the array syntax's own characters, and floats to the last bit.
import postgres from 'postgres'
import t from 'tap'
import { float8Array, int4Array, numberLiteral, textArray, textLiteral } from '../src/stores/postgres/arrays.ts'
import { ADMIN_DATABASE_URL } from './helpers/stores.ts'

const sql = postgres(ADMIN_DATABASE_URL, { max: 1, fetch_types: false, onnotice: () => {} })
t.teardown(async () => { await sql.end({ timeout: 5 }) })

t.test('literals', async (t) => {
  t.equal(textLiteral([]), '{}')
  t.equal(textLiteral(['a', 'b c']), '{"a","b c"}')
  t.equal(textLiteral(['say "hi"', 'back\\slash']), '{"say \\"hi\\"","back\\\\slash"}')
  t.equal(numberLiteral([1, 0.5, -2]), '{1,0.5,-2}')
})

t.test('text arrays arrive unchanged, whatever the characters', async (t) => {
  const users = ['plain', '', ' ', 'a,b', '{x}', '"quoted"', 'back\\slash', '\\"', 'NULL', 'null', 'ünïcödé ✓', 'tab\there', 'new\nline', '\'single\'', '}{,"\\']
  const rows = await sql<Array<{ v: string, n: string }>>`SELECT v, n FROM unnest(${textArray(sql, users)}::text[]) WITH ORDINALITY AS x(v, n) ORDER BY n`
  t.same(rows.map((r) => r.v), users)
})

t.test('float8 and int4 arrays arrive exactly', async (t) => {
  const floats = [0, -0, 1, 0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, -123456789.123456789, 2 ** 53 + 2, 3600.000001]
  const rows = await sql<Array<{ v: number }>>`SELECT v FROM unnest(${float8Array(sql, floats)}::float8[]) WITH ORDINALITY AS x(v, n) ORDER BY n`
  t.same(rows.map((r) => r.v), floats.map((f) => f === 0 ? 0 : f))
  t.equal(rows.every((r, i) => Object.is(r.v, floats[i]) || (floats[i] === 0 && r.v === 0)), true, 'bit for bit')
  const ints = [1, 2, 2147483647, -2147483648]
  const back = await sql<Array<{ v: number }>>`SELECT v FROM unnest(${int4Array(sql, ints)}::int[]) WITH ORDINALITY AS x(v, n) ORDER BY n`
  t.same(back.map((r) => r.v), ints)
})

t.test('an empty array is an empty array', async (t) => {
  const rows = await sql<Array<{ n: number }>>`SELECT cardinality(${textArray(sql, [])}::text[]) AS n, cardinality(${float8Array(sql, [])}::float8[]) AS m`
  t.equal(rows[0]!.n, 0)
})
