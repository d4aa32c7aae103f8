/**
 * Step 3: PostgreSQL decides, atomically, on its own clock. The snapshot it returns goes to
 * the cache (off the response path), to the clock estimate and to the over-limit cache.
 */
import { makeDecision } from '../../core/decision.ts'
import type { Decision, DecisionSource } from '../../core/domain.ts'
import type { BucketRequest, CacheRead, DecidingStore, SnapshotCache } from '../../core/ports.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import type { DbClock } from '../db-clock.ts'
import type { OverLimitCache } from './over-limit.ts'

export class AskPostgres {
  readonly #store: DecidingStore
  readonly #cache: SnapshotCache
  readonly #clock: DbClock
  readonly #overLimit: OverLimitCache | null

  constructor (store: DecidingStore, cache: SnapshotCache, clock: DbClock, overLimit: OverLimitCache | null) {
    this.#store = store
    this.#cache = cache
    this.#clock = clock
    this.#overLimit = overLimit
  }

  /** `read`: what the cache held (a snapshot sets `X-Data-Source: redis`). Rejects when PostgreSQL fails. */
  async decide (request: BucketRequest, key: string, read: CacheRead): Promise<Decision> {
    const result = await this.#store.decide(request)
    const snapshot = result.snapshot
    this.#clock.observe(snapshot.atMs)
    this.#cache.write(key, snapshot, fullRefillSeconds(request.policy), result.allowed ? request.cost : 0)
    this.#overLimit?.remember(key, snapshot, request, this.#clock.nowMs())
    const source: DecisionSource = read.kind === 'snapshot' ? 'redis' : result.created ? 'new-user' : 'postgres'
    return makeDecision(request.policy, request.cost, result.allowed, snapshot.tokens, source, 'postgres')
  }
}
