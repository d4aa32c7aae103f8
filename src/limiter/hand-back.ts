/**
 * The hand-back: buckets Redis decided while PostgreSQL was down go back to PostgreSQL, so that
 * PostgreSQL is the truth again without losing what was spent. Per page of the Redis-owned set,
 * in one PostgreSQL transaction: lock the rows (key order, like every decision), mark the
 * buckets in Redis as being handed back and read them, merge keeping the lower token count,
 * commit; then turn each Redis value into an ordinary snapshot of the merged row. A gateway
 * that meets a bucket being handed back asks PostgreSQL, whose row lock makes it wait for the
 * merged state (docs/design.md, "Ownership and the hand-back").
 *
 * Idempotent and safe to run from several gateways at once: the row locks serialise them and
 * a bucket already handed back is skipped. A pass that fails (either store failing again)
 * leaves the rest in the set for the next pass.
 */
import type { DecidingStore, OwnedBucket, RedisDecider } from '../core/ports.ts'

const PAGE = 200

export interface HandBackResult {
  /** Buckets merged into PostgreSQL by this pass. */
  readonly handedBack: number
  /** Buckets still owned by Redis when the pass ended (others may be deciding meanwhile). */
  readonly remaining: number
}

/** One pass over the set of Redis-owned buckets. Rejects if either store fails. */
export async function handBack (store: DecidingStore, redis: RedisDecider): Promise<HandBackResult> {
  let handedBack = 0
  let cursor = '0'
  do {
    const page = await redis.owned(cursor, PAGE)
    cursor = page.cursor
    // One entry per bucket and page: a bucket seen twice (its policy changed) waits for the next pass.
    const seen = new Set<string>()
    const batch: OwnedBucket[] = []
    for (const b of page.buckets) {
      const id = b.policy + '\n' + b.userId
      if (!seen.has(id)) { seen.add(id); batch.push(b) }
    }
    if (batch.length === 0) continue
    const merged = await store.handBack(batch, async (locked) => await redis.markHandingBack(locked))
    await redis.handedBack(batch, merged)
    for (const m of merged) if (m !== null) handedBack++
  } while (cursor !== '0')
  return { handedBack, remaining: await redis.ownedCount() }
}
