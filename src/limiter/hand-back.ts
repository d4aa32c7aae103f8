/**
 * Hands buckets that Redis decided while PostgreSQL was down back to PostgreSQL, so that
 * PostgreSQL is the truth again without losing what was spent. Per batch, in one PostgreSQL
 * transaction: lock the rows (key order, like every decision), mark the buckets in Redis as
 * being handed back and read them, merge keeping the lower token count, commit; then turn each
 * Redis value into an ordinary snapshot of the merged row. A gateway that meets a bucket being
 * handed back asks PostgreSQL, whose row lock makes it wait for the merged state.
 *
 * Idempotent and safe to run from several gateways at once: the row locks serialise them and
 * a bucket already handed back is skipped. A pass that fails (either store failing again)
 * leaves the rest in the set for the next pass.
 */
import type { Sql } from 'postgres'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { encode } from '../stores/redis/snapshot-cache.ts'
import type { OwnedBucket, RedisFallback } from '../stores/redis/redis-decider.ts'

const TEXT = 25
const FLOAT8 = 701
const BATCH = 200

export interface WriteBackResult {
  /** Buckets merged into PostgreSQL by this pass. */
  readonly handedBack: number
  /** Buckets still owned by Redis when the pass ended (others may be deciding meanwhile). */
  readonly remaining: number
}

export class WriteBack {
  readonly #sql: Sql
  readonly #fallback: RedisFallback
  readonly #metrics: Metrics
  readonly #log: Logger

  constructor (sql: Sql, fallback: RedisFallback, metrics: Metrics, log: Logger) {
    this.#sql = sql
    this.#fallback = fallback
    this.#metrics = metrics
    this.#log = log
  }

  /** One pass over the set of Redis-owned buckets. Throws if either store fails. */
  async run (): Promise<WriteBackResult> {
    let handedBack = 0
    let cursor = '0'
    do {
      const page = await this.#fallback.owned(cursor, BATCH)
      cursor = page.cursor
      // One entry per bucket and batch: a bucket seen twice (policy changed) waits for the next pass.
      const seen = new Set<string>()
      const batch = page.buckets.filter((b) => {
        const id = b.policy + '\n' + b.userId
        if (seen.has(id)) return false
        seen.add(id)
        return true
      })
      if (batch.length > 0) handedBack += await this.#merge(batch)
    } while (cursor !== '0')
    const remaining = await this.#fallback.ownedCount()
    if (handedBack > 0) this.#metrics.handedBack.inc(handedBack)
    return { handedBack, remaining }
  }

  async #merge (buckets: OwnedBucket[]): Promise<number> {
    const policies = buckets.map((b) => b.policy)
    const users = buckets.map((b) => b.userId)
    const capacities = buckets.map((b) => b.capacity)
    const snapshots: string[] = new Array<string>(buckets.length).fill('')
    let merged = 0
    await this.#sql.begin(async (tx) => {
      await tx`SELECT rate_limit_lock(${tx.array(policies, TEXT)}::text[], ${tx.array(users, TEXT)}::text[], ${tx.array(capacities, FLOAT8)}::float8[])`
      const tokens = await this.#fallback.handBack(buckets)
      const idx: number[] = []
      for (let i = 0; i < buckets.length; i++) if (tokens[i] !== null) idx.push(i)
      if (idx.length === 0) return
      const rows = await tx<Array<{ o_idx: number, o_tokens: number, o_at_ms: number }>>`
        SELECT o_idx, o_tokens, o_at_ms FROM rate_limit_merge(
          ${tx.array(idx.map((i) => policies[i]!), TEXT)}::text[], ${tx.array(idx.map((i) => users[i]!), TEXT)}::text[],
          ${tx.array(idx.map((i) => capacities[i]!), FLOAT8)}::float8[], ${tx.array(idx.map((i) => buckets[i]!.refillPerSecond), FLOAT8)}::float8[],
          ${tx.array(idx.map((i) => tokens[i]!), FLOAT8)}::float8[])`
      for (const r of rows) snapshots[idx[r.o_idx - 1]!] = encode({ tokens: r.o_tokens, atMs: Number(r.o_at_ms) })
      merged = rows.length
    })
    await this.#fallback.handedBack(buckets, snapshots)
    if (this.#log.isLevelEnabled('debug')) this.#log.debug({ buckets: merged }, 'buckets handed back to PostgreSQL')
    return merged
  }
}
