/**
 * What read-alongside.ts needs to know: the buckets this process recently saw low (PostgreSQL
 * left them with few tokens, or a snapshot refused them, or Redis owned them). Those are read
 * first, so a snapshot refusal still spares PostgreSQL; every other bucket, including one this
 * process has not seen (a caller back after a pause, a new caller, whose read almost never
 * refuses), has its PostgreSQL decision started alongside the read.
 */
import type { BucketRequest } from '../../core/ports.ts'

/** How long a bucket seen low is read first. */
export const LOW_FOR_MS = 10_000
/** Keys remembered per generation: at most twice this many are kept. */
export const LOW_MAX_KEYS = 65_536

/**
 * The buckets this process last saw low, and until when it reads them first. Two generations
 * bound the memory without a per-entry list: when the young one is full it becomes the old one
 * and the previous old one is dropped whole (a dropped bucket is overlapped again: at worst one
 * PostgreSQL decision that a snapshot would have spared, until it is seen low again).
 */
export class RecentlyLow {
  #young = new Map<string, number>()
  #old = new Map<string, number>()
  /** Expiries are stored relative to this, as small integers (no boxed number per entry). */
  readonly #base: number
  readonly #maxKeys: number

  constructor (nowMs: number, maxKeys = LOW_MAX_KEYS) {
    this.#base = nowMs
    this.#maxKeys = maxKeys
  }

  /**
   * PostgreSQL's result for `key`: low unless it could pay this cost twice more and is at least
   * half full (a caller far from its limit).
   */
  seen (key: string, request: BucketRequest, tokens: number, nowMs: number): void {
    if (tokens >= 2 * request.cost && tokens * 2 >= request.policy.capacity) this.forget(key)
    else this.markLow(key, nowMs)
  }

  /** Read this bucket first for a while (a snapshot refused it, or Redis owns it). */
  markLow (key: string, nowMs: number): void {
    if (this.#young.size >= this.#maxKeys && !this.#young.has(key)) {
      this.#old = this.#young
      this.#young = new Map()
    }
    this.#young.set(key, Math.round(nowMs - this.#base + LOW_FOR_MS))
  }

  forget (key: string): void {
    this.#young.delete(key)
    this.#old.delete(key)
  }

  low (key: string, nowMs: number): boolean {
    const until = this.#young.get(key) ?? this.#old.get(key)
    return until !== undefined && until > nowMs - this.#base
  }

  get size (): number { return this.#young.size + this.#old.size }
}
