/**
 * The over-limit cache: an in-process map of bucket snapshots that prove a refusal, so a caller
 * flooding past its limit is refused with no network round trip (`X-Data-Source: local`).
 *
 * Correct by the argument of docs/design.md, "Why a cached refusal is safe": consumption only lowers a bucket and refill is a fixed
 * function of time, so any snapshot, however old, projects at least as many tokens as the
 * truth, and a refusal read from it is right. Time is the caller's estimate of the database
 * clock, pushed `marginMs` later so that an estimate running early never refuses a caller who
 * could pay. Anything that raises a bucket (an admin reset) must `forget` its key.
 *
 * Bounded: at most `maxEntries` keys, least recently used evicted first; an entry that can no
 * longer refuse is dropped when next looked at. Pure apart from the map: time is a parameter.
 */
import { canPay, tokensAt } from '../../core/token-bucket.ts'
import type { BucketSnapshot, Policy } from '../../core/domain.ts'

export class DenyCache {
  readonly #maxEntries: number
  readonly #marginMs: number
  // A Map iterates in insertion order: re-inserting on use keeps the least recent first.
  readonly #entries = new Map<string, BucketSnapshot>()

  constructor (maxEntries: number, marginMs: number) {
    if (!(maxEntries >= 1)) throw new RangeError('maxEntries must be at least 1')
    this.#maxEntries = maxEntries
    this.#marginMs = marginMs
  }

  get size (): number { return this.#entries.size }

  /**
   * When the remembered snapshot proves that `cost` cannot be paid at `nowMs` (database
   * clock), the tokens it projects for now; otherwise undefined and the stores decide.
   */
  refuse (key: string, policy: Policy, cost: number, nowMs: number): number | undefined {
    const snapshot = this.#entries.get(key)
    if (snapshot === undefined) return undefined
    if (canPay(tokensAt(snapshot, policy, nowMs + this.#marginMs), cost)) {
      // The bucket may pay by now: this entry has done its job.
      this.#entries.delete(key)
      return undefined
    }
    this.#entries.delete(key)
    this.#entries.set(key, snapshot)
    return tokensAt(snapshot, policy, nowMs)
  }

  /**
   * Offers a snapshot just read or decided. It is kept only if it would refuse `cost` now
   * (a bucket that can pay is of no use here, and keeping it would let allowed callers push
   * out flooding ones); otherwise any older entry for the key goes.
   */
  remember (key: string, snapshot: BucketSnapshot, policy: Policy, cost: number, nowMs: number): void {
    this.#entries.delete(key)
    if (canPay(tokensAt(snapshot, policy, nowMs + this.#marginMs), cost)) return
    this.#entries.set(key, snapshot)
    if (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next()
      if (oldest.done !== true) this.#entries.delete(oldest.value)
    }
  }

  /** The bucket was raised (reset): what we remember of it may now refuse wrongly. */
  forget (key: string): void {
    this.#entries.delete(key)
  }
}
