/**
 * Step 3: PostgreSQL decides, atomically, on its own clock. The snapshot it returns goes to
 * the cache (off the response path), to the clock estimate and to the over-limit cache.
 */
import { makeDecision } from '../../core/decision.ts'
import type { Decision, DecisionSource } from '../../core/domain.ts'
import type { BucketRequest, CacheRead, DecidingStore, SnapshotCache, StoreDecision } from '../../core/ports.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import type { DbClock } from '../db-clock.ts'
import type { OverLimitCache } from './over-limit.ts'
import type { RecentlyLow } from './recently-low.ts'

export class AskPostgres {
  readonly #store: DecidingStore
  readonly #cache: SnapshotCache
  readonly #clock: DbClock
  readonly #overLimit: OverLimitCache | null
  readonly #low: RecentlyLow | null

  constructor (store: DecidingStore, cache: SnapshotCache, clock: DbClock, overLimit: OverLimitCache | null, low: RecentlyLow | null = null) {
    this.#store = store
    this.#cache = cache
    this.#clock = clock
    this.#overLimit = overLimit
    this.#low = low
  }

  /** `read`: what the cache held (a snapshot sets `X-Data-Source: redis`). Rejects when PostgreSQL fails. */
  async decide (request: BucketRequest, key: string, read: CacheRead): Promise<Decision> {
    return this.settle(request, key, read, await this.#store.decide(request))
  }

  /** Every batch slot is in flight (a decision asked now would wait for one). */
  get busy (): boolean { return this.#store.busy }

  /** The store's decision alone, before the cache is read (read-alongside.ts); `settle` completes it. */
  start (request: BucketRequest): Promise<StoreDecision> {
    return this.#store.decide(request)
  }

  /** What follows every PostgreSQL decision: snapshot write, clock, over-limit cache, the Decision. */
  settle (request: BucketRequest, key: string, read: CacheRead, result: StoreDecision): Decision {
    const snapshot = result.snapshot
    this.#clock.observe(snapshot.atMs)
    this.#cache.write(key, snapshot, fullRefillSeconds(request.policy), result.allowed ? request.cost : 0)
    const nowMs = this.#clock.nowMs()
    this.#overLimit?.remember(key, snapshot, request, nowMs)
    this.#low?.seen(key, request, snapshot.tokens, nowMs)
    const source: DecisionSource = read.kind === 'snapshot' ? 'redis' : result.created ? 'new-user' : 'postgres'
    return makeDecision(request.policy, request.cost, result.allowed, snapshot.tokens, source, 'postgres')
  }

  /**
   * One request's buckets in one decision, all or nothing. Each Decision says whether its
   * bucket could pay (`allowed`); the request passes only if all of them could.
   */
  async decideGroup (requests: readonly BucketRequest[], keys: readonly string[], reads: readonly CacheRead[]): Promise<Decision[]> {
    const results = await this.#store.decideGroup(requests)
    return results.map((result, i) => {
      const request = requests[i]!
      const key = keys[i]!
      const snapshot = result.snapshot
      this.#clock.observe(snapshot.atMs)
      this.#cache.write(key, snapshot, fullRefillSeconds(request.policy), result.allowed ? request.cost : 0)
      this.#overLimit?.remember(key, snapshot, request, this.#clock.nowMs())
      const source: DecisionSource = reads[i]!.kind === 'snapshot' ? 'redis' : result.created ? 'new-user' : 'postgres'
      return makeDecision(request.policy, request.cost, result.canPay, snapshot.tokens, source, 'postgres')
    })
  }

  /**
   * Gives PostgreSQL-charged buckets their cost back (never above capacity) and offers the
   * raised snapshots to the cache: a newer snapshot replaces the cached one, so the cache does
   * not keep refusing with the tokens the refund gave back. Rejects when PostgreSQL fails.
   */
  async refund (requests: readonly BucketRequest[], keys: readonly string[]): Promise<void> {
    const snapshots = await this.#store.refund(requests)
    snapshots.forEach((snapshot, i) => {
      this.#clock.observe(snapshot.atMs)
      this.#overLimit?.forget(keys[i]!)
      this.#cache.write(keys[i]!, snapshot, fullRefillSeconds(requests[i]!.policy), 0)
    })
  }
}
