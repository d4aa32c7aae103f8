/**
 * Steps 2 and 3 side by side, for every bucket this process has not recently seen low
 * (recently-low.ts): the Redis read would almost surely not refuse, so waiting for it before
 * asking PostgreSQL only adds its round trip to the request's latency. Both are asked at once;
 * PostgreSQL's answer is the one that counts (it is always right), the read still sets
 * `X-Data-Source` (a snapshot: `redis`) exactly as when the steps run one after the other, and
 * a snapshot that proves a refusal still gives the same refusal (`redis`, decided by Redis)
 * when PostgreSQL refused too. A bucket seen low is read first for a while, so a caller at its
 * limit is refused from the snapshot and spares PostgreSQL, as before.
 *
 * A read that finds the bucket Redis-owned or being handed back (another gateway lost
 * PostgreSQL meanwhile) cannot use PostgreSQL's early answer: PostgreSQL does not hold what Redis
 * spent. If that answer charged the request, the charge is a second one, and it is not refunded
 * (a refund could land after a hand-back merged the lower state and raise it). Instead Redis
 * decides the request only after the charge has landed, taking the bucket back even from a
 * hand-back in progress (`WithoutPostgres.afterCharge`), so that the two charges of the one
 * request are in both stores, and the merge (the lower of the two) counts it once:
 *
 * - landed before a merge: PostgreSQL has it, Redis charges it, the merge keeps Redis's lower state;
 * - landed after a merge (it waited on the row lock of another gateway's hand-back): it is
 *   the merged row's only charge, and Redis, deciding after it, charges the merged state
 *   (the snapshot it became, or the state being merged, which is no higher). Where the read
 *   after the charge finds the snapshot the merge left, stamped before the charge (the row
 *   lock orders the two stamps), PostgreSQL's answer is exact as it stands and is used: the
 *   bucket is not taken into Redis again while PostgreSQL answers.
 *
 * Before this order, Redis could decide the request while the decision waited on the row lock;
 * the merge then held Redis's charge and PostgreSQL charged the merged row again: the caller
 * lost a token (test/store-stall.test.ts, a failed CI run; test/read-alongside.test.ts builds it).
 */
import type { Decision } from '../../core/domain.ts'
import type { BucketRequest, CacheRead, StoreDecision } from '../../core/ports.ts'
import type { AskPostgres } from './deciding-store.ts'
import type { RecentlyLow } from './recently-low.ts'
import { snapshotDeny } from './snapshot-deny.ts'

export class ReadAlongside {
  readonly #postgres: AskPostgres
  readonly #low: RecentlyLow

  constructor (postgres: AskPostgres, low: RecentlyLow) {
    this.#postgres = postgres
    this.#low = low
  }

  /**
   * PostgreSQL's decision, started now; null (read first) for a bucket recently seen low, or
   * while every batch slot is in flight: the decision would wait for a slot anyway, so the read
   * costs no latency, and decisions that queue meanwhile make the next batch larger (under
   * saturation, fewer round trips per request: what the sequential steps gave).
   */
  start (request: BucketRequest, key: string, dbNowMs: number): Promise<StoreDecision> | null {
    if (this.#postgres.busy || this.#low.low(key, dbNowMs)) return null
    const early = this.#postgres.start(request)
    // Handled here too: a read that finds the bucket Redis-owned never awaits it.
    early.catch(noop)
    return early
  }

  /**
   * A snapshot refused the bucket, or the read found it Redis-owned or being handed back (an
   * early answer is then not used: see above): read it first for a while.
   */
  readFirst (key: string, dbNowMs: number): void {
    this.#low.markLow(key, dbNowMs)
  }

  /** The early decision if it charged the request (allowed); null if it refused or failed (`failed` is told). */
  async charged (early: Promise<StoreDecision>, failed: (err: unknown) => void): Promise<StoreDecision | null> {
    try {
      const result = await early
      return result.allowed ? result : null
    } catch (err) {
      failed(err)
      return null
    }
  }

  /**
   * The decision from PostgreSQL's early answer and the read, as the sequential steps would
   * give it. Rejects when PostgreSQL failed and the snapshot did not prove a refusal.
   */
  async finish (early: Promise<StoreDecision>, request: BucketRequest, key: string, read: CacheRead, dbNowMs: number): Promise<Decision> {
    const refused = snapshotDeny(read, request, dbNowMs)
    let result: StoreDecision
    try {
      result = await early
    } catch (err) {
      // Read first, PostgreSQL would not have been asked: the snapshot's refusal stands.
      if (refused !== null) return refused
      throw err
    }
    const decided = this.#postgres.settle(request, key, read, result)
    return refused !== null && !result.allowed ? refused : decided
  }
}

function noop (): void {}
