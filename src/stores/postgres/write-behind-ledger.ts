/**
 * PostgreSQL in write-behind mode (the BucketLedger port): the rows Redis seeds a missing
 * bucket from, and the writes behind. Beside PostgresStore (the strict path) on its pool:
 *
 * - `load`: the rows of the buckets Redis missed, refilled to the database's now; the loads
 *   of one turn of the event loop share one SELECT (group commit, as the decisions do).
 * - `sync`: one statement per flush, whatever the number of buckets: unnest the arrays, lock
 *   the existing rows in key order (the order every decision and hand-back uses: no deadlocks),
 *   merge keeping the lower count at the later time, insert the missing rows in key order.
 *   src/core/write-behind-merge.ts is the same merge in TypeScript.
 */
import type { PendingQuery, Row, Sql } from 'postgres'
import { StoreFailure } from '../../core/errors.ts'
import type { BucketLedger, BucketRequest, SyncEntry } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { Batcher } from '../batcher.ts'
import { float8Array, textArray } from './arrays.ts'
import type { PostgresStore } from './postgres-store.ts'

/**
 * The flush. Each state is stamped `clock_timestamp() - age`: the gateway measured the age
 * from the reply's arrival, later than Redis's decision, so the stamp is never earlier than
 * the truth and the merge's refill never gives a bucket tokens it did not earn.
 *
 * Rows are found (and locked, in key order) by one primary-key probe per key, a LATERAL
 * subquery: given a plain join of a flush's hundreds of keys, the planner hashed the whole
 * table instead, so each flush cost grew with the number of callers PostgreSQL holds (600
 * keys against 50,000 rows: 26 ms, 15 of them the sequential scan; 8 ms this way). A row another
 * transaction inserts concurrently (the ON CONFLICT branch, rare) keeps the lower raw count at
 * the later time, which is lower still than the refilled comparison: never raised.
 */
export function syncStatement (sql: Sql, e: readonly SyncEntry[]): PendingQuery<Row[]> {
  return sql`
WITH s AS MATERIALIZED (
  SELECT x.p, x.u, least(x.cap, x.t) AS t, clock_timestamp() - x.a * interval '1 millisecond' AS at, x.cap, x.rate
  FROM unnest(${textArray(sql, e.map((x) => x.policy.name))}::text[], ${textArray(sql, e.map((x) => x.userId))}::text[],
    ${float8Array(sql, e.map((x) => x.tokens))}::float8[], ${float8Array(sql, e.map((x) => Math.max(0, x.ageMs)))}::float8[],
    ${float8Array(sql, e.map((x) => x.policy.capacity))}::float8[], ${float8Array(sql, e.map((x) => x.policy.refillPerSecond))}::float8[]) AS x(p, u, t, a, cap, rate)
), locked AS MATERIALIZED (
  SELECT l.policy, l.user_id FROM (SELECT s.p, s.u FROM s ORDER BY s.p, s.u) AS o
  CROSS JOIN LATERAL (SELECT r.policy, r.user_id FROM rate_limits r WHERE r.policy = o.p AND r.user_id = o.u FOR UPDATE) AS l
), upd AS (
  UPDATE rate_limits r SET
    tokens = least(
      least(s.cap, r.tokens + greatest(0, extract(epoch FROM (greatest(r.last_refill_time, s.at) - r.last_refill_time))) * s.rate),
      least(s.cap, s.t + greatest(0, extract(epoch FROM (greatest(r.last_refill_time, s.at) - s.at))) * s.rate)),
    last_refill_time = greatest(r.last_refill_time, s.at)
  FROM s JOIN locked l ON l.policy = s.p AND l.user_id = s.u
  WHERE r.policy = s.p AND r.user_id = s.u
  RETURNING 1
)
INSERT INTO rate_limits AS r (policy, user_id, tokens, last_refill_time)
SELECT s.p, s.u, s.t, s.at FROM s
WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.policy = s.p AND l.user_id = s.u)
ORDER BY s.p, s.u
ON CONFLICT (policy, user_id) DO UPDATE SET
  tokens = least(r.tokens, excluded.tokens),
  last_refill_time = greatest(r.last_refill_time, excluded.last_refill_time)`
}

/** The rows of the missed buckets; `LIMIT 1` keeps the planner from flattening the probe into a join (see the flush). */
export function loadStatement (sql: Sql, q: readonly BucketRequest[]): PendingQuery<Array<{ o_idx: number, o_tokens: number | null }>> {
  return sql`
SELECT x.n::int AS o_idx,
  -- least() skips NULLs: a missing row must stay NULL (a new caller), not read as full.
  CASE WHEN r.tokens IS NULL THEN NULL
    ELSE least(x.cap, r.tokens + greatest(0, extract(epoch FROM (clock_timestamp() - r.last_refill_time))) * x.rate) END AS o_tokens
FROM unnest(${textArray(sql, q.map((r) => r.policy.name))}::text[], ${textArray(sql, q.map((r) => r.userId))}::text[],
  ${float8Array(sql, q.map((r) => r.policy.capacity))}::float8[], ${float8Array(sql, q.map((r) => r.policy.refillPerSecond))}::float8[]) WITH ORDINALITY AS x(p, u, cap, rate, n)
LEFT JOIN LATERAL (SELECT r.tokens, r.last_refill_time FROM rate_limits r WHERE r.policy = x.p AND r.user_id = x.u LIMIT 1) AS r ON true`
}

export class PostgresLedger implements BucketLedger {
  readonly #store: PostgresStore
  readonly #metrics: Metrics
  readonly #loads: Batcher<BucketRequest, number | null>

  constructor (store: PostgresStore, metrics: Metrics, options: { maxInFlight: number, maxSize: number }) {
    this.#store = store
    this.#metrics = metrics
    this.#loads = new Batcher((items) => this.#loadMany(items), { maxSize: options.maxSize, maxInFlight: options.maxInFlight, windowMs: 0 })
  }

  async load (request: BucketRequest): Promise<number | null> {
    return await this.#loads.submit(request)
  }

  async #loadMany (requests: BucketRequest[]): Promise<Array<number | null>> {
    const { sql } = this.#store
    this.#metrics.storeOperations.inc({ store: 'postgres', operation: 'wb-load' })
    let rows: Array<{ o_idx: number, o_tokens: number | null }>
    try {
      rows = await this.#store.bounded('wb-load', loadStatement(sql, requests).execute())
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'postgres', operation: 'wb-load' })
      this.#store.health.failed(err)
      throw err instanceof StoreFailure ? err : new StoreFailure('postgres', 'PostgreSQL could not load the buckets', { cause: err })
    }
    this.#store.health.succeeded()
    const out = new Array<number | null>(requests.length).fill(null)
    for (const r of rows) out[r.o_idx - 1] = r.o_tokens === null ? null : Number(r.o_tokens)
    return out
  }

  async ping (): Promise<void> {
    await this.#store.ping()
  }

  async sync (entries: readonly SyncEntry[]): Promise<void> {
    if (entries.length === 0) return
    const { sql } = this.#store
    this.#metrics.storeOperations.inc({ store: 'postgres', operation: 'wb-sync' })
    try {
      await this.#store.bounded('wb-sync', syncStatement(sql, entries).execute())
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'postgres', operation: 'wb-sync' })
      throw err instanceof StoreFailure ? err : new StoreFailure('postgres', 'PostgreSQL could not take the write-behind flush', { cause: err })
    }
  }
}
