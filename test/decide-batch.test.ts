// The set-based batch decision (migrations/007, rate_limit_decide_batch) against the plpgsql loop
// it replaces (006, rate_limit_decide_groups), on a real PostgreSQL: the same batches, mixing
// distinct, repeated and new keys and groups of several buckets, give the same results; and
// concurrent batches from two pools on overlapping keys (one pool also on the old function, as
// during a rolling upgrade) never over-admit and never deadlock. The one-bucket function (008,
// rate_limit_decide_one) against 006 for batches of one, and the distinct-keys loop (009,
// rate_limit_decide_distinct) against 006 for batches of one bucket per request, no key twice.
import t from 'tap'
import postgres from 'postgres'
import { distinctKeys } from '../src/stores/postgres/postgres-store.ts'
import { migrate } from '../src/stores/postgres/migrate.ts'
import { createTestDatabase } from './helpers/stores.ts'

interface Row { o_idx: number, o_allowed: boolean, o_can_pay: boolean, o_tokens: number, o_at_ms: number, o_created: boolean }
interface Item { group: number, policy: string, user: string, cost: number, capacity: number, rate: number }
type Fn = 'rate_limit_decide_batch' | 'rate_limit_decide_groups' | 'rate_limit_decide_one' | 'rate_limit_decide_distinct'

async function database (t: { teardown: (fn: () => unknown) => void }): Promise<postgres.Sql> {
  const sql = postgres(await createTestDatabase(t, 'gwbatch'), { max: 6, onnotice: () => {} })
  t.teardown(() => sql.end())
  await migrate(sql)
  return sql
}

async function decide (sql: postgres.Sql, fn: Fn, items: readonly Item[]): Promise<Row[]> {
  if (fn === 'rate_limit_decide_one') return await decideOne(sql, items)
  if (fn === 'rate_limit_decide_distinct') {
    const rows = await sql.unsafe<Row[]>('SELECT * FROM rate_limit_decide_distinct($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[])',
      [items.map((i) => i.policy), items.map((i) => i.user), items.map((i) => i.cost), items.map((i) => i.capacity), items.map((i) => i.rate)] as never)
    return rows.slice().sort((a, b) => a.o_idx - b.o_idx)
  }
  const rows = await sql.unsafe<Row[]>(`SELECT * FROM ${fn}($1::int[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::float8[])`,
    [items.map((i) => i.group), items.map((i) => i.policy), items.map((i) => i.user), items.map((i) => i.cost), items.map((i) => i.capacity), items.map((i) => i.rate)] as never)
  return rows.slice().sort((a, b) => a.o_idx - b.o_idx)
}

/** Each item alone, in order, as PostgresStore sends a batch of one bucket (o_can_pay is o_allowed). */
async function decideOne (sql: postgres.Sql, items: readonly Item[]): Promise<Row[]> {
  const rows: Row[] = []
  for (const [n, i] of items.entries()) {
    const [r] = await sql<Array<Omit<Row, 'o_idx' | 'o_can_pay'>>>`SELECT * FROM rate_limit_decide_one(${i.policy}::text, ${i.user}::text, ${i.cost}::float8, ${i.capacity}::float8, ${i.rate}::float8)`
    rows.push({ ...r!, o_idx: n + 1, o_can_pay: r!.o_allowed })
  }
  return rows
}

/** Two pools on one new, migrated database (two gateways, or two versions of one during an upgrade). */
async function twoPools (t: { teardown: (fn: () => unknown) => void }, maxA: number, maxB: number): Promise<[postgres.Sql, postgres.Sql]> {
  const url = await createTestDatabase(t, 'gwbatch')
  const pools: [postgres.Sql, postgres.Sql] = [postgres(url, { max: maxA, onnotice: () => {} }), postgres(url, { max: maxB, onnotice: () => {} })]
  t.teardown(async () => { await Promise.all(pools.map(async (p) => await p.end())) })
  await migrate(pools[0])
  return pools
}

/**
 * Two functions' answers for one item agree: a policy that never refills exactly, one that does
 * within 0.01 of a token (the two databases decide milliseconds apart).
 */
function sameDecision (x: Row, y: Row, item: Item): boolean {
  return x.o_idx === y.o_idx && x.o_allowed === y.o_allowed && x.o_can_pay === y.o_can_pay && x.o_created === y.o_created &&
    (item.rate === 0 ? x.o_tokens === y.o_tokens : Math.abs(x.o_tokens - y.o_tokens) < 0.01)
}

/**
 * A round's rows from two functions, item by item: the first item they disagree on fails the
 * test, named by the two functions' labels, and ends the comparison (false).
 */
function sameRows (t: Asserts, round: number, items: readonly Item[], a: readonly Row[], b: readonly Row[], labels: readonly [string, string]): boolean {
  for (let i = 0; i < items.length; i++) {
    if (!sameDecision(a[i]!, b[i]!, items[i]!)) {
      t.fail(`round ${round}, item ${i + 1} (${JSON.stringify(items[i])}): ${labels[0]} ${JSON.stringify(a[i])}, ${labels[1]} ${JSON.stringify(b[i])}`)
      return false
    }
  }
  return true
}

/** The assertions exactlyCapacity makes. */
interface Asserts { same: (found: unknown, wanted: unknown, message: string) => unknown, ok: (value: unknown, message: string) => unknown, fail: (message: string) => unknown }

/** One caller of exactlyCapacity: `rounds` calls of `fn` on `pool`, each on `size` distinct keys in a random order. */
interface Spender { pool: 0 | 1, fn: Fn, rounds: number, size: number }

/**
 * The spenders at once on `keyCount` keys of `capacity` (no refill), demand well above it: no
 * call fails (a deadlock would, after deadlock_timeout), every key is allowed exactly its
 * capacity, and every row ends spent to zero.
 */
async function exactlyCapacity (t: Asserts, pools: [postgres.Sql, postgres.Sql], keyCount: number, capacity: number, rand: () => number, spenders: readonly Spender[]): Promise<void> {
  const keys = Array.from({ length: keyCount }, (_, i) => `k${i}`)
  const allowed = new Map<string, number>(keys.map((k) => [k, 0]))
  const failures: unknown[] = []
  const pick = (size: number): string[] => keys.map((k) => [rand(), k] as const).sort((a, b) => a[0] - b[0]).slice(0, size).map(([, k]) => k)
  await Promise.all(spenders.map(async ({ pool, fn, rounds, size }) => {
    for (let n = 0; n < rounds; n++) {
      const items = pick(size).map((user, g) => ({ group: g + 1, policy: 'c', user, cost: 1, capacity, rate: 0 }))
      try {
        const rows = await decide(pools[pool], fn, items)
        rows.forEach((r, i) => { if (r.o_allowed) allowed.set(items[i]!.user, allowed.get(items[i]!.user)! + 1) })
      } catch (err) {
        failures.push(err)
      }
    }
  }))
  const demand = spenders.reduce((sum, s) => sum + s.rounds * s.size, 0)
  t.same(failures.map((e) => String(e)), [], 'no decision failed (no deadlock)')
  t.same([...allowed].filter(([, n]) => n !== capacity), [], `every key allowed exactly its capacity of ${capacity} (demand: ${demand} over ${keyCount} keys)`)
  const rows = await pools[0]<Array<{ tokens: number }>>`SELECT tokens FROM rate_limits WHERE policy = 'c'`
  t.ok(rows.length === keys.length && rows.every((r) => Math.abs(r.tokens) < 1e-9), 'each row spent to zero')
}

/**
 * One bucket per request on the database clock, for the functions that decide each bucket alone
 * (008, 009): a row refilled from the past, one stamped ahead of the clock, one that cannot pay
 * (refused, nothing written), a new caller, and one paid from its refill alone. Returns the
 * allowances whose stored rows a caller may check further.
 */
async function clockCases (t: Asserts, sql: postgres.Sql, fn: Fn): Promise<{ past: Row, refills: Row }> {
  await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES
    ('p', 'past', 0.5, clock_timestamp() - interval '2.25 seconds'),
    ('p', 'future', 1, clock_timestamp() + interval '1 hour'),
    ('p', 'empty', 0.25, clock_timestamp() - interval '1 minute'),
    ('p', 'refills', 0, clock_timestamp() - interval '3 seconds')`
  const before = Date.now()
  const [past, future, empty, fresh, refills] = await decide(sql, fn, [
    { group: 1, policy: 'p', user: 'past', cost: 1, capacity: 10, rate: 2 },
    { group: 2, policy: 'p', user: 'future', cost: 1, capacity: 10, rate: 2 },
    { group: 3, policy: 'p', user: 'empty', cost: 1, capacity: 10, rate: 0 },
    { group: 4, policy: 'p', user: 'fresh', cost: 3, capacity: 10, rate: 1 },
    { group: 5, policy: 'p', user: 'refills', cost: 2, capacity: 10, rate: 1 }
  ])
  // 0.5 + 2.25 s x 2/s (plus the time the statement took) - 1
  t.ok(past!.o_allowed && past!.o_tokens >= 4 && past!.o_tokens < 4.2, `refilled, charged: ${past!.o_tokens}`)
  t.ok(past!.o_at_ms >= before - 1000 && past!.o_at_ms < Date.now() + 1000, 'stamped now on the database clock')
  t.ok(future!.o_allowed && future!.o_tokens === 0 && future!.o_at_ms > Date.now() + 3_000_000, 'a timestamp ahead of the clock is kept, not moved back, and adds nothing')
  t.ok(!empty!.o_allowed && !empty!.o_can_pay && empty!.o_tokens === 0.25, 'refused: it holds less than the cost')
  t.ok(fresh!.o_created && fresh!.o_allowed && fresh!.o_tokens === 7, 'a new caller starts full and is charged')
  // 0 + 3 s x 1/s - 2: paid from the refill alone (in 009, the UPDATE's own refill decided it).
  t.ok(refills!.o_allowed && refills!.o_tokens >= 1 && refills!.o_tokens < 1.2 && !refills!.o_created, `refilled from empty, charged: ${refills!.o_tokens}`)
  const [row] = await sql<Array<{ tokens: number, stale: boolean }>>`SELECT tokens, last_refill_time < clock_timestamp() - interval '50 seconds' AS stale FROM rate_limits WHERE user_id = 'empty'`
  t.ok(row!.tokens === 0.25 && row!.stale, 'the refusal wrote nothing')
  return { past: past!, refills: refills! }
}

/** Every bucket row, in key order. */
async function rows (sql: postgres.Sql): Promise<Array<{ policy: string, user_id: string, tokens: number }>> {
  return await sql`SELECT policy, user_id, tokens FROM rate_limits ORDER BY policy, user_id`
}

/** A small deterministic PRNG (mulberry32), so a failure can be replayed from its seed. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

// Two policies: 'still' never refills (its balances must agree exactly), 'slow' refills 1e-3 a
// second (the two databases decide milliseconds apart: less than 0.01 of a token, never enough
// to move a balance, a multiple of 0.25, across a cost, a multiple of 0.25 too).
const POLICIES = [{ policy: 'still', capacity: 6, rate: 0 }, { policy: 'slow', capacity: 4, rate: 1e-3 }]

function batch (rand: () => number, round: number): Item[] {
  const items: Item[] = []
  const groups = 1 + Math.floor(rand() * 40)
  for (let g = 1; g <= groups; g++) {
    const size = rand() < 0.25 ? 2 + Math.floor(rand() * 2) : 1
    const used = new Set<string>()
    for (let s = 0; s < size; s++) {
      const p = POLICIES[Math.floor(rand() * POLICIES.length)]!
      // A pool of 30 callers (repeats within and across batches), and a new caller now and then.
      const user = rand() < 0.15 ? `new-${round}-${g}-${s}` : `u${Math.floor(rand() * 30)}`
      if (used.has(p.policy + user)) continue // one request charges a bucket once
      used.add(p.policy + user)
      items.push({ group: g, policy: p.policy, user, cost: 0.25 * (1 + Math.floor(rand() * 12)), capacity: p.capacity, rate: p.rate })
    }
  }
  return items
}

t.test('the set-based batch gives what the sequential loop gives: distinct, repeated and new keys, groups', async (t) => {
  const [loop, set] = await Promise.all([database(t), database(t)])
  const rand = prng(20261201)
  let repeated = 0
  let created = 0
  let refusedGroups = 0
  let distinctOnly = 0
  for (let round = 0; round < 120; round++) {
    // Every fifth batch has only distinct keys (the set-based statements alone decide it), every
    // other of those one bucket per group too (the single UPDATE of 007's step 2a).
    let items = batch(rand, round)
    if (round % 5 === 0) {
      const seen = new Set<string>()
      items = items.filter((i) => !seen.has(i.policy + ' ' + i.user) && seen.add(i.policy + ' ' + i.user) !== undefined)
      if (round % 10 === 0) items = items.map((i, n) => ({ ...i, group: n + 1 }))
      distinctOnly++
    }
    const [a, b] = await Promise.all([decide(loop, 'rate_limit_decide_groups', items), decide(set, 'rate_limit_decide_batch', items)])
    t.equal(b.length, items.length, `round ${round}: one row per item`)
    const keys = new Set(items.map((i) => i.policy + ' ' + i.user))
    if (keys.size < items.length) repeated++
    if (!sameRows(t, round, items, a, b, ['loop', 'set'])) return
    for (const y of b.slice(0, items.length)) if (y.o_created) created++
    refusedGroups += new Set(items.filter((_, i) => !b[i]!.o_allowed).map((i) => i.group)).size
  }
  const [ra, rb] = await Promise.all([rows(loop), rows(set)])
  t.same(rb.map((r) => [r.policy, r.user_id]), ra.map((r) => [r.policy, r.user_id]), 'the same rows exist')
  t.ok(rb.every((r, i) => Math.abs(r.tokens - ra[i]!.tokens) < 0.01), 'with the same balances')
  t.ok(repeated > 50 && distinctOnly > 10 && created > 50 && refusedGroups > 50,
    `the batches covered the cases: ${repeated} with a repeated key, ${distinctOnly} distinct only, ${created} keys created, ${refusedGroups} groups refused`)
})

t.test('the set-based batch refills on the database clock as 006 does, never moving a timestamp back', async (t) => {
  const sql = await database(t)
  await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES
    ('p', 'past', 0.5, clock_timestamp() - interval '2.25 seconds'),
    ('p', 'future', 1, clock_timestamp() + interval '1 hour'),
    ('p', 'twice', 0, clock_timestamp() - interval '3 seconds')`
  const before = Date.now()
  const rows = await decide(sql, 'rate_limit_decide_batch', [
    { group: 1, policy: 'p', user: 'past', cost: 1, capacity: 10, rate: 2 },
    { group: 2, policy: 'p', user: 'future', cost: 1, capacity: 10, rate: 2 },
    { group: 3, policy: 'p', user: 'twice', cost: 2, capacity: 10, rate: 1 },
    { group: 4, policy: 'p', user: 'twice', cost: 2, capacity: 10, rate: 1 }
  ])
  const [past, future, twice1, twice2] = rows
  // 0.5 + 2.25 s x 2/s (plus the time the statement took) - 1
  t.ok(past!.o_allowed && past!.o_tokens >= 4 && past!.o_tokens < 4.2, `refilled, charged: ${past!.o_tokens}`)
  t.ok(past!.o_at_ms >= before - 1000 && past!.o_at_ms < Date.now() + 1000, 'stamped now on the database clock')
  t.ok(future!.o_allowed && future!.o_tokens === 0, 'a timestamp ahead of the clock is kept, not moved back, and adds nothing')
  t.ok(future!.o_at_ms > Date.now() + 3_000_000, 'its timestamp stays ahead')
  t.ok(twice1!.o_allowed && !twice2!.o_allowed && twice2!.o_can_pay === false, 'one key twice: the second pays from what the first left')
  t.equal(twice1!.o_at_ms, twice2!.o_at_ms)
  const [row] = await sql`SELECT tokens FROM rate_limits WHERE user_id = 'twice'`
  t.ok(row!.tokens >= 1 && row!.tokens < 1.2, 'only the charge that was allowed was written')
})

t.test('concurrent batches from two pools on overlapping keys: never over-admitted, never a deadlock', async (t) => {
  const pools = await twoPools(t, 4, 4)
  // Deadlocks are detected after deadlock_timeout (1 s by default): any would fail a batch here.
  const capacity = 25
  const keys = Array.from({ length: 40 }, (_, i) => `k${i}`)
  const allowed = new Map<string, number>(keys.map((k) => [k, 0]))
  const rand = prng(7)
  const failures: unknown[] = []
  const run = async (pool: postgres.Sql, fn: Fn): Promise<void> => {
    for (let round = 0; round < 30; round++) {
      // 60 items on a random third of the keys, in random order: repeats, new keys, groups of two.
      const items: Item[] = []
      let g = 0
      while (items.length < 60) {
        g++
        const a = keys[Math.floor(rand() * keys.length)]!
        items.push({ group: g, policy: 'c', user: a, cost: 1, capacity, rate: 0 })
        if (rand() < 0.3) {
          const b = keys[Math.floor(rand() * keys.length)]!
          if (b !== a) items.push({ group: g, policy: 'c', user: b, cost: 1, capacity, rate: 0 })
        }
      }
      try {
        const rows = await decide(pool, fn, items)
        rows.forEach((r, i) => { if (r.o_allowed) allowed.set(items[i]!.user, allowed.get(items[i]!.user)! + 1) })
      } catch (err) {
        failures.push(err)
      }
    }
  }
  await Promise.all([
    ...Array.from({ length: 4 }, async () => await run(pools[0]!, 'rate_limit_decide_batch')),
    ...Array.from({ length: 3 }, async () => await run(pools[1]!, 'rate_limit_decide_batch')),
    run(pools[1]!, 'rate_limit_decide_groups')
  ])
  t.same(failures.map((e) => String(e)), [], 'no batch failed (no deadlock)')
  const over = [...allowed].filter(([, n]) => n > capacity)
  t.same(over, [], `no key allowed more than its capacity of ${capacity}`)
  t.ok([...allowed.values()].filter((n) => n === capacity).length > 30, 'demand exceeded capacity on most keys, which then were full-spent exactly')
  const rows = await pools[0]!<Array<{ user_id: string, tokens: number }>>`SELECT user_id, tokens FROM rate_limits WHERE policy = 'c'`
  t.ok(rows.every((r) => Math.abs(r.tokens - (capacity - allowed.get(r.user_id)!)) < 1e-9), 'each row holds capacity minus what was allowed')
})

t.test('one bucket: rate_limit_decide_one gives what 006 gives for a batch of one', async (t) => {
  const [loop, one] = await Promise.all([database(t), database(t)])
  const rand = prng(20261203)
  let created = 0
  let refused = 0
  for (let round = 0; round < 40; round++) {
    // One bucket per batch: existing callers of both policies (repeats across batches), new ones, refusals.
    const items = batch(rand, round).map((i) => ({ ...i, group: 1 }))
    const a: Row[] = []
    // Each a batch of its own (o_idx 1), numbered as the items are.
    for (const item of items) a.push(...(await decide(loop, 'rate_limit_decide_groups', [item])).map((r) => ({ ...r, o_idx: a.length + 1 })))
    const b = await decide(one, 'rate_limit_decide_one', items)
    if (!sameRows(t, round, items, a, b, ['006', '008'])) return
    for (const y of b.slice(0, items.length)) {
      if (y.o_created) created++
      if (!y.o_allowed) refused++
    }
  }
  const [ra, rb] = await Promise.all([rows(loop), rows(one)])
  t.same(rb.map((r) => [r.policy, r.user_id]), ra.map((r) => [r.policy, r.user_id]), 'the same rows exist')
  t.ok(rb.every((r, i) => Math.abs(r.tokens - ra[i]!.tokens) < 0.01), 'with the same balances')
  t.ok(created > 50 && refused > 50, `the decisions covered the cases: ${created} keys created, ${refused} refused`)
})

t.test('one bucket: refilled on the database clock, a timestamp ahead kept, a refusal writes nothing', async (t) => {
  await clockCases(t, await database(t), 'rate_limit_decide_one')
})

t.test('one bucket, concurrently: callers on a handful of keys from two pools, beside 006 batches, never over-admitted', async (t) => {
  const pools = await twoPools(t, 6, 4)
  await exactlyCapacity(t, pools, 5, 30, prng(11), [
    ...Array.from({ length: 6 }, () => ({ pool: 0, fn: 'rate_limit_decide_one', rounds: 60, size: 1 }) as const),
    ...Array.from({ length: 2 }, () => ({ pool: 1, fn: 'rate_limit_decide_one', rounds: 60, size: 1 }) as const),
    ...Array.from({ length: 2 }, () => ({ pool: 1, fn: 'rate_limit_decide_groups', rounds: 15, size: 5 }) as const)
  ])
})

/** One bucket per request and no key twice: what PostgresStore sends to 009 (groups numbered 1..n). */
function distinctBatch (rand: () => number, round: number): Item[] {
  const seen = new Set<string>()
  return batch(rand, round)
    .filter((i) => !seen.has(i.policy + ' ' + i.user) && seen.add(i.policy + ' ' + i.user) !== undefined)
    .map((i, n) => ({ ...i, group: n + 1 }))
}

t.test('distinct keys: rate_limit_decide_distinct gives what 006 gives, allowed, refused and new', async (t) => {
  const [loop, distinct] = await Promise.all([database(t), database(t)])
  const rand = prng(20261207)
  let created = 0
  let refused = 0
  let allowed = 0
  for (let round = 0; round < 80; round++) {
    const items = distinctBatch(rand, round)
    const [a, b] = await Promise.all([decide(loop, 'rate_limit_decide_groups', items), decide(distinct, 'rate_limit_decide_distinct', items)])
    t.equal(b.length, items.length, `round ${round}: one row per item`)
    if (!sameRows(t, round, items, a, b, ['006', '009'])) return
    for (const y of b.slice(0, items.length)) {
      if (y.o_created) created++
      if (y.o_allowed) allowed++
      else refused++
    }
  }
  const [ra, rb] = await Promise.all([rows(loop), rows(distinct)])
  t.same(rb.map((r) => [r.policy, r.user_id]), ra.map((r) => [r.policy, r.user_id]), 'the same rows exist')
  t.ok(rb.every((r, i) => Math.abs(r.tokens - ra[i]!.tokens) < 0.01), 'with the same balances')
  t.ok(created > 50 && refused > 50 && allowed > 200, `the decisions covered the cases: ${created} keys created, ${allowed} allowed, ${refused} refused`)
})

t.test('distinct keys: refilled on the database clock, a timestamp ahead kept, a refusal writes nothing', async (t) => {
  const sql = await database(t)
  const { past, refills } = await clockCases(t, sql, 'rate_limit_decide_distinct')
  const stored = await sql<Array<{ user_id: string, tokens: number, at_ms: number }>>`SELECT user_id, tokens, extract(epoch FROM last_refill_time) * 1000 AS at_ms FROM rate_limits WHERE user_id IN ('past', 'refills') ORDER BY user_id`
  for (const [row, result, rate] of [[stored[0]!, past, 2], [stored[1]!, refills, 1]] as const) {
    const atMs = Number(row.at_ms)
    t.ok(result.o_at_ms >= atMs && Math.abs(result.o_tokens - (row.tokens + (result.o_at_ms - atMs) / 1000 * rate)) < 1e-6,
      `${row.user_id}: the result is the row as written, refilled to the result's later stamp`)
  }
})

t.test('distinct keys: a refusal that held the row while the UPDATE waited cannot stamp a later snapshot without the charge', async (t) => {
  // A transaction that only locks the row (a refusal) between the UPDATE's clock read and its
  // lock answers with the row refilled to its own clock. The UPDATE's answer, which holds the
  // charge, must be stamped later, or the cache (newer wins) keeps the refusal's and Redis could
  // take the bucket over without the charge.
  const pools = await twoPools(t, 2, 2)
  await pools[0]`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time) VALUES ('p', 'held', 5, clock_timestamp())`
  let refusalStampMs = 0
  let decision: Promise<Row[]> | null = null
  await pools[1].begin(async (tx) => {
    await tx`SELECT 1 FROM rate_limits WHERE policy = 'p' AND user_id = 'held' FOR UPDATE`
    decision = decide(pools[0], 'rate_limit_decide_distinct', [{ group: 1, policy: 'p', user: 'held', cost: 1, capacity: 10, rate: 1 }])
    // The UPDATE has read its clock and waits for this transaction's lock.
    const deadline = Date.now() + 10_000
    for (;;) {
      const [w] = await pools[0]<Array<{ n: number }>>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`
      if (w!.n > 0) break
      if (Date.now() > deadline) throw new Error('the decision never waited for the lock')
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const [c] = await tx<Array<{ ms: number }>>`SELECT extract(epoch FROM clock_timestamp()) * 1000 AS ms`
    refusalStampMs = Number(c!.ms)
  })
  const [row] = await decision!
  t.ok(row!.o_allowed, 'allowed once the lock was released')
  t.ok(row!.o_at_ms > refusalStampMs, `stamped after the lock holder's clock (${row!.o_at_ms} > ${refusalStampMs})`)
  const [stored] = await pools[0]<Array<{ tokens: number, at_ms: number }>>`SELECT tokens, extract(epoch FROM last_refill_time) * 1000 AS at_ms FROM rate_limits WHERE user_id = 'held'`
  t.ok(Math.abs(row!.o_tokens - (stored!.tokens + (row!.o_at_ms - Number(stored!.at_ms)) / 1000)) < 1e-6, 'and is the row as written, refilled to that stamp')
})

t.test('distinct keys, concurrently: batches from two pools on a handful of keys, beside 006 batches and 008, never over-admitted', async (t) => {
  const pools = await twoPools(t, 6, 4)
  await exactlyCapacity(t, pools, 8, 40, prng(13), [
    ...Array.from({ length: 5 }, () => ({ pool: 0, fn: 'rate_limit_decide_distinct', rounds: 20, size: 5 }) as const),
    ...Array.from({ length: 2 }, () => ({ pool: 1, fn: 'rate_limit_decide_distinct', rounds: 20, size: 5 }) as const),
    { pool: 1, fn: 'rate_limit_decide_groups', rounds: 10, size: 5 },
    { pool: 0, fn: 'rate_limit_decide_one', rounds: 40, size: 1 }
  ])
})

t.test('distinctKeys: a small batch goes to 009 only when no bucket occurs twice', async (t) => {
  t.ok(distinctKeys([], []), 'empty')
  t.ok(distinctKeys(['p', 'p', 'q'], ['a', 'b', 'a']), 'the same user under two policies is two buckets')
  t.notOk(distinctKeys(['p', 'q', 'p'], ['a', 'b', 'a']), 'a bucket twice, apart')
  t.notOk(distinctKeys(['p', 'p'], ['a', 'a']), 'a bucket twice, adjacent')
})
