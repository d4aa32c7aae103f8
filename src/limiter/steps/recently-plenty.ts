/**
 * What read-alongside.ts needs to know: the buckets PostgreSQL recently left with plenty of
 * tokens (recorded by deciding-store.ts on every decision it settles).
 */
import type { BucketRequest } from '../../core/ports.ts'

/** How long a bucket seen with plenty of tokens is asked of PostgreSQL without waiting for Redis. */
export const PLENTY_FOR_MS = 10_000
/** Keys remembered per generation: at most twice this many are kept. */
export const PLENTY_MAX_KEYS = 65_536

/**
 * The buckets this process last saw with plenty of tokens, and until when it trusts that. Two
 * generations bound the memory without a per-entry list: when the young one is full it becomes
 * the old one and the previous old one is dropped whole.
 */
export class RecentlyPlenty {
  #young = new Map<string, number>()
  #old = new Map<string, number>()
  /** Expiries are stored relative to this, as small integers (no boxed number per entry). */
  readonly #base: number
  readonly #maxKeys: number

  constructor (nowMs: number, maxKeys = PLENTY_MAX_KEYS) {
    this.#base = nowMs
    this.#maxKeys = maxKeys
  }

  /**
   * PostgreSQL's result for `key`: remembered while it could pay this cost twice more and is at
   * least half full (a caller far from its limit), forgotten otherwise.
   */
  seen (key: string, request: BucketRequest, tokens: number, nowMs: number): void {
    if (tokens >= 2 * request.cost && tokens * 2 >= request.policy.capacity) {
      if (this.#young.size >= this.#maxKeys) {
        this.#old = this.#young
        this.#young = new Map()
      }
      this.#young.set(key, Math.round(nowMs - this.#base + PLENTY_FOR_MS))
    } else {
      this.forget(key)
    }
  }

  forget (key: string): void {
    this.#young.delete(key)
    this.#old.delete(key)
  }

  plenty (key: string, nowMs: number): boolean {
    const until = this.#young.get(key) ?? this.#old.get(key)
    return until !== undefined && until > nowMs - this.#base
  }

  get size (): number { return this.#young.size + this.#old.size }
}
