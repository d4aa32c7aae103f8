/**
 * Circuit breaker for a best-effort dependency. After `threshold` consecutive failures it
 * opens: callers skip the dependency for `openMs`, then one probe is let through; success
 * closes it, failure opens it again with a longer back-off (doubling, up to `maxOpenMs`).
 * Time is a parameter so the logic is testable without waiting.
 */
export interface BreakerOptions {
  threshold: number
  openMs: number
  maxOpenMs: number
}

export class CircuitBreaker {
  readonly #options: BreakerOptions
  #failures = 0
  #openUntil = 0
  #backoff: number
  #probing = false

  constructor (options: BreakerOptions) {
    this.#options = options
    this.#backoff = options.openMs
  }

  /** May the caller use the dependency now? In the half-open state only one probe may. */
  allow (nowMs: number): boolean {
    if (this.#failures < this.#options.threshold) return true
    if (nowMs < this.#openUntil || this.#probing) return false
    this.#probing = true
    return true
  }

  get open (): boolean { return this.#failures >= this.#options.threshold }

  success (): void {
    this.#failures = 0
    this.#probing = false
    this.#backoff = this.#options.openMs
  }

  failure (nowMs: number): void {
    this.#failures++
    if (this.#failures < this.#options.threshold) return
    if (this.#probing) this.#backoff = Math.min(this.#backoff * 2, this.#options.maxOpenMs)
    this.#probing = false
    this.#openUntil = nowMs + this.#backoff
  }
}
