/**
 * Steps 4 and 5 as one unit: PostgreSQL could not decide (it is down, failed just now, or Redis
 * owns the bucket). Redis decides if the fallback lets it; where it cannot, PostgreSQL if it is
 * up after all, else the fail mode. Also the strict path of a write-behind bucket whose Redis
 * cannot decide: PostgreSQL first, then the same two steps.
 */
import type { Config } from '../../config/schema.ts'
import type { Decision } from '../../core/domain.ts'
import { CACHE_MISS, CACHE_SKIPPED, type BucketRequest, type CacheRead, type SnapshotCache, type StoreDecision } from '../../core/ports.ts'
import type { DecidingMode } from '../mode.ts'
import type { Outage } from '../outage.ts'
import type { AskPostgres } from './deciding-store.ts'
import type { FailMode } from './fail-mode.ts'
import type { RedisDecides } from './redis-decides.ts'

export interface WithoutPostgresDeps {
  readonly cache: SnapshotCache
  readonly postgres: AskPostgres
  readonly redisDecides: RedisDecides
  readonly failMode: FailMode
  readonly outage: Outage
  readonly mode: DecidingMode
  /** The live fallback settings (a reload may change them). */
  readonly fallback: () => Config['fallback']
}

export class WithoutPostgres {
  readonly #d: WithoutPostgresDeps

  constructor (deps: WithoutPostgresDeps) {
    this.#d = deps
  }

  async decide (request: BucketRequest, key: string): Promise<Decision> {
    const d = this.#d
    if (d.fallback().redisDecides) {
      // What PostgreSQL last decided here must reach Redis before Redis takes the bucket over.
      await d.cache.settled()
      let outcome = await d.redisDecides.decide(request, false)
      if (outcome === 'handing-back') {
        // Another gateway is merging this bucket into PostgreSQL: PostgreSQL answers once the
        // merge is done. If PostgreSQL is down (or fails us now), Redis takes the bucket back.
        const decided = d.outage.down ? null : await this.tryPostgres(request, key)
        outcome = decided ?? await d.redisDecides.decide(request, true)
      }
      if (outcome !== null && outcome !== 'handing-back') {
        if (d.outage.down) d.mode.enter('redis-fallback', { err: d.outage.cause })
        return outcome
      }
    }
    // Redis owns this bucket but cannot be reached: PostgreSQL is the best judge left.
    const decided = d.outage.down ? null : await this.tryPostgres(request, key)
    return decided ?? d.failMode.decide(request, d.outage.cause)
  }

  /**
   * Step 4 for several buckets of one request, in one atomic Redis call: all charged or none.
   * Null where Redis cannot decide them together (a Cluster, Redis away, the fallback not
   * letting it, one of them being handed back while PostgreSQL answers): the caller decides
   * them one by one (`decide`, then the fail mode).
   */
  async decideGroup (requests: readonly BucketRequest[]): Promise<Decision[] | null> {
    const d = this.#d
    if (!d.fallback().redisDecides) return null
    await d.cache.settled()
    let outcome = await d.redisDecides.decideGroup(requests, false)
    if (outcome === 'handing-back') {
      // One of them is being merged into PostgreSQL, which decides it once the merge is done;
      // but not the others (Redis owns them, and PostgreSQL does not hold what Redis spent):
      // one by one. With PostgreSQL down, Redis takes them back, as for one bucket.
      if (!d.outage.down) return null
      outcome = await d.redisDecides.decideGroup(requests, true)
    }
    if (outcome === null || outcome === 'handing-back') return null
    if (d.outage.down) d.mode.enter('redis-fallback', { err: d.outage.cause })
    return outcome
  }

  /**
   * The bucket is Redis-owned (or being handed back), and PostgreSQL has already charged this
   * request (read-alongside.ts, an early decision): Redis decides it now that the charge has
   * landed, taking the bucket back even from a hand-back, so the merge counts the request once;
   * unless a merge older than the charge has handed it back already (below).
   * If Redis cannot decide, PostgreSQL's decision stands (asking it again would charge twice).
   */
  async afterCharge (request: BucketRequest, key: string, read: CacheRead, charged: StoreDecision): Promise<Decision> {
    const d = this.#d
    // Handed back meanwhile, by a merge older than the charge: the charge is on the merged row,
    // PostgreSQL's answer is exact, and Redis need not take the bucket over again. (A snapshot
    // can only replace an owned value through a merge; the row lock orders the two stamps.)
    const now = await d.cache.read(key)
    if (now.kind === 'snapshot' && now.atMs < charged.snapshot.atMs) return d.postgres.settle(request, key, now, charged)
    if (d.fallback().redisDecides) {
      await d.cache.settled()
      const outcome = await d.redisDecides.decide(request, true)
      if (outcome !== null && outcome !== 'handing-back') return outcome
    }
    return d.postgres.settle(request, key, read, charged)
  }

  /** A write-behind bucket Redis cannot decide: PostgreSQL strictly, else steps 4 and 5. */
  async strictly (request: BucketRequest, key: string): Promise<Decision> {
    const decided = this.#d.outage.down ? null : await this.tryPostgres(request, key, CACHE_SKIPPED)
    return decided ?? await this.decide(request, key)
  }

  /** PostgreSQL's decision, or null when it failed (the outage is entered). */
  async tryPostgres (request: BucketRequest, key: string, read: CacheRead = CACHE_MISS): Promise<Decision | null> {
    try {
      return await this.#d.postgres.decide(request, key, read)
    } catch (err) {
      this.#d.outage.failed(err)
      return null
    }
  }
}
