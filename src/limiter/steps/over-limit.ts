/**
 * Step 1 (LOCAL_DENY_CACHE=true): a caller this process has just seen over its limit is refused
 * from memory, with no round trip (`X-Data-Source: local`). deny-cache.ts holds the snapshots.
 */
import { makeDecision } from '../../core/decision.ts'
import type { BucketSnapshot, Decision } from '../../core/domain.ts'
import type { BucketRequest } from '../../core/ports.ts'
import { DenyCache } from './deny-cache.ts'

export class OverLimitCache {
  readonly #cache: DenyCache

  constructor (maxEntries: number, marginMs: number) {
    this.#cache = new DenyCache(maxEntries, marginMs)
  }

  /** A refusal when a remembered snapshot proves it (`dbNowMs`: the database clock); else null. */
  refuse (key: string, request: BucketRequest, dbNowMs: number): Decision | null {
    const tokens = this.#cache.refuse(key, request.policy, request.cost, dbNowMs)
    return tokens === undefined ? null : makeDecision(request.policy, request.cost, false, tokens, 'local', 'gateway')
  }

  /** Offers a snapshot on the database clock (PostgreSQL's, never Redis's own while it decides). */
  remember (key: string, snapshot: BucketSnapshot, request: BucketRequest, dbNowMs: number): void {
    this.#cache.remember(key, snapshot, request.policy, request.cost, dbNowMs)
  }

  forget (key: string): void {
    this.#cache.forget(key)
  }
}
