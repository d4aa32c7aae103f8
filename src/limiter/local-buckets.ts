/**
 * In-process token buckets for when neither store answers (FAIL_MODE=local), like
 * rate-limiter-flexible's insurance limiter: each of `replicas` gateways gets an equal share
 * of every policy (capacity and rate divided by the replica count), so the fleet together
 * stays near the configured limit without sharing any state.
 *
 * Memory is bounded: a bucket that has refilled completely carries no information and is
 * dropped; beyond `maxKeys` the oldest entries are dropped first (which can only let a
 * forgotten caller start again from a full share).
 */
import { consume } from '../core/token-bucket.ts'
import type { BucketSnapshot, Policy } from '../core/domain.ts'

export interface LocalDecision {
  readonly allowed: boolean
  readonly tokens: number
  /** The share of the policy this gateway enforces. */
  readonly share: Policy
}

export class LocalBuckets {
  readonly #replicas: number
  readonly #maxKeys: number
  readonly #now: () => number
  readonly #buckets = new Map<string, BucketSnapshot>()
  readonly #shares = new Map<Policy, Policy>()
  #lastSweep = 0

  constructor (replicas: number, maxKeys: number, now: () => number = () => performance.now()) {
    this.#replicas = replicas
    this.#maxKeys = maxKeys
    this.#now = now
  }

  get size (): number { return this.#buckets.size }

  share (policy: Policy): Policy {
    let share = this.#shares.get(policy)
    if (share === undefined) {
      share = { name: policy.name, capacity: policy.capacity / this.#replicas, refillPerSecond: policy.refillPerSecond / this.#replicas }
      this.#shares.set(policy, share)
    }
    return share
  }

  consume (policy: Policy, userId: string, cost: number): LocalDecision {
    const now = this.#now()
    const share = this.share(policy)
    const key = policy.name + '\n' + userId
    const result = consume(this.#buckets.get(key) ?? null, share, cost, now)
    // Re-inserting moves the key to the end, so the map stays ordered by last use.
    this.#buckets.delete(key)
    this.#buckets.set(key, result.snapshot)
    if (this.#buckets.size > this.#maxKeys) this.#evict(now)
    return { allowed: result.allowed, tokens: result.snapshot.tokens, share }
  }

  /** Forget everything (the stores are back and decide again). */
  clear (): void {
    this.#buckets.clear()
  }

  #evict (now: number): void {
    // At most one full sweep per second; otherwise drop the least recently used.
    if (now - this.#lastSweep >= 1000) {
      this.#lastSweep = now
      const shares = new Map<string, Policy>()
      for (const share of this.#shares.values()) shares.set(share.name, share)
      for (const [key, snap] of this.#buckets) {
        const share = shares.get(key.slice(0, key.indexOf('\n')))
        if (share !== undefined && snap.tokens + ((now - snap.atMs) * share.refillPerSecond) / 1000 >= share.capacity) this.#buckets.delete(key)
      }
    }
    while (this.#buckets.size > this.#maxKeys) {
      const oldest = this.#buckets.keys().next().value
      if (oldest === undefined) break
      this.#buckets.delete(oldest)
    }
  }
}
