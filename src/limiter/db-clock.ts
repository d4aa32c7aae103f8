/**
 * An estimate of the database's clock. Snapshots are stamped by the database; projecting them
 * with the local clock would deny callers who have tokens whenever this host runs behind.
 *
 * Each decision's reply carries the database time at which it was decided, which is earlier
 * than the moment the reply arrives here, so `dbMs - localMs` never overstates the offset.
 * The largest such sample is the best estimate; samples are kept per window so that drift
 * (or a stepped clock) is followed within two windows.
 */
export class DbClock {
  readonly #windowMs: number
  readonly #now: () => number
  #current = -Infinity
  #previous = -Infinity
  #windowStart: number

  constructor (windowMs = 30_000, now: () => number = Date.now) {
    this.#windowMs = windowMs
    this.#now = now
    this.#windowStart = now()
  }

  /** Record the database time carried by a reply that arrived just now. */
  observe (dbMs: number): void {
    const local = this.#now()
    this.#roll(local)
    const offset = dbMs - local
    if (offset > this.#current) this.#current = offset
  }

  /** Whether any reply has been seen: before it, nowMs() is only the local clock. */
  get observed (): boolean {
    return this.#current !== -Infinity || this.#previous !== -Infinity
  }

  /** Offset to add to the local clock; 0 until the first sample. */
  get offsetMs (): number {
    const best = Math.max(this.#current, this.#previous)
    return best === -Infinity ? 0 : best
  }

  /** The database's clock now, as far as we can tell. */
  nowMs (): number {
    const local = this.#now()
    this.#roll(local)
    return local + this.offsetMs
  }

  #roll (local: number): void {
    if (local - this.#windowStart < this.#windowMs) return
    this.#previous = this.#current
    this.#current = -Infinity
    this.#windowStart = local
  }
}
