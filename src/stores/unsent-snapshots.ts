/**
 * Snapshot writes that did not reach Redis (disconnected, its circuit open, or the call failed),
 * kept to be written once it answers again. Without them, a Redis back from an outage during
 * which PostgreSQL decided holds snapshots older than PostgreSQL's rows, and should PostgreSQL
 * fail next, Redis would take those buckets over from a past state and admit again what
 * PostgreSQL granted meanwhile (docs/reliability.md, "A Redis outage, then a PostgreSQL one").
 *
 * One entry per bucket: the newest snapshot, ordered as WRITE orders them (a later stamp, or
 * fewer tokens at an equal one), and the sum of the charges, which WRITE charges to a bucket
 * Redis owns by the time they land. Bounded: past `max` buckets a new one is not kept.
 */
import type { BucketSnapshot } from '../core/domain.ts'

/** Most buckets a cache keeps: about 25 MB of heap when full (100,000 callers of 40-character keys, measured). */
export const MAX_UNSENT = 100_000

export interface UnsentSnapshot {
  readonly key: string
  snapshot: BucketSnapshot
  ttlSeconds: number
  charge: number
}

export class UnsentSnapshots {
  readonly #max: number
  #entries = new Map<string, UnsentSnapshot>()

  constructor (max: number) {
    this.#max = max
  }

  get size (): number { return this.#entries.size }

  add (key: string, snapshot: BucketSnapshot, ttlSeconds: number, charge: number): void {
    const held = this.#entries.get(key)
    if (held === undefined) {
      if (this.#entries.size < this.#max) this.#entries.set(key, { key, snapshot, ttlSeconds, charge })
      return
    }
    if (snapshot.atMs > held.snapshot.atMs || (snapshot.atMs === held.snapshot.atMs && snapshot.tokens < held.snapshot.tokens)) {
      held.snapshot = snapshot
      held.ttlSeconds = ttlSeconds
    }
    held.charge += charge
  }

  /** A bucket was raised (admin reset): its old state must not be written later. */
  forget (key: string): void {
    this.#entries.delete(key)
  }

  /** Everything held, in the order first kept; none is held afterwards. */
  take (): UnsentSnapshot[] {
    const out = [...this.#entries.values()]
    this.#entries = new Map()
    return out
  }
}
