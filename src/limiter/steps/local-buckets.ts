/**
 * In-process token buckets for when neither store answers (FAIL_MODE=local), like
 * rate-limiter-flexible's insurance limiter: each of `replicas` gateways gets an equal share
 * of every policy (capacity and rate divided by the replica count), so the fleet together
 * stays near the configured limit without sharing any state.
 *
 * Memory is bounded: a bucket that has refilled completely carries no information and is
 * dropped; beyond `maxKeys` the oldest entries are dropped first (which can only let a
 * forgotten caller start again from a full share). Each bucket keeps the share it was spent
 * under, so the sweep judges it by its own numbers (an override or a reload makes several
 * policies of one name), and shares die with their policies (a WeakMap).
 */
import { consume, tokensAt } from '../../core/token-bucket.ts'
import type { BucketSnapshot, Policy } from '../../core/domain.ts'

export interface LocalDecision {
  readonly allowed: boolean
  readonly tokens: number
  /** The share of the policy this gateway enforces. */
  readonly share: Policy
}

interface LocalBucket extends BucketSnapshot {
  readonly share: Policy
}

export class LocalBuckets {
  readonly replicas: number
  readonly maxKeys: number
  readonly #now: () => number
  readonly #buckets = new Map<string, LocalBucket>()
  #shares = new WeakMap<Policy, Policy>()
  #lastSweep = -Infinity

  constructor (replicas: number, maxKeys: number, now: () => number = () => performance.now()) {
    this.replicas = replicas
    this.maxKeys = maxKeys
    this.#now = now
  }

  get size (): number { return this.#buckets.size }

  share (policy: Policy): Policy {
    let share = this.#shares.get(policy)
    if (share === undefined) {
      share = { name: policy.name, capacity: policy.capacity / this.replicas, refillPerSecond: policy.refillPerSecond / this.replicas }
      if (policy.cacheName !== undefined) share = { ...share, cacheName: policy.cacheName }
      this.#shares.set(policy, share)
    }
    return share
  }

  consume (policy: Policy, userId: string, cost: number): LocalDecision {
    const now = this.#now()
    const share = this.share(policy)
    // The cache name carries the numbers: a bucket spent under other numbers is another bucket.
    const key = (policy.cacheName ?? policy.name) + '\n' + userId
    const previous = this.#buckets.get(key)
    const result = consume(previous ?? null, share, cost, now)
    // Re-inserting moves the key to the end, so the map stays ordered by last use.
    if (previous !== undefined) this.#buckets.delete(key)
    this.#buckets.set(key, { tokens: result.snapshot.tokens, atMs: result.snapshot.atMs, share })
    if (this.#buckets.size > this.maxKeys) this.#evict(now)
    return { allowed: result.allowed, tokens: result.snapshot.tokens, share }
  }

  /** Gives `cost` back to a bucket charged here, never above its share; false when it is gone (full). */
  refund (policy: Policy, userId: string, cost: number): boolean {
    const key = (policy.cacheName ?? policy.name) + '\n' + userId
    const bucket = this.#buckets.get(key)
    if (bucket === undefined) return false
    const now = this.#now()
    const tokens = Math.min(bucket.share.capacity, tokensAt(bucket, bucket.share, now) + cost)
    this.#buckets.set(key, { tokens, atMs: Math.max(now, bucket.atMs), share: bucket.share })
    return true
  }

  /** Forget everything (the stores are back and decide again). */
  clear (): void {
    this.#buckets.clear()
    this.#shares = new WeakMap()
  }

  #evict (now: number): void {
    // At most one full sweep per second; otherwise drop the least recently used.
    if (now - this.#lastSweep >= 1000) {
      this.#lastSweep = now
      for (const [key, bucket] of this.#buckets) {
        if (tokensAt(bucket, bucket.share, now) >= bucket.share.capacity) this.#buckets.delete(key)
      }
    }
    while (this.#buckets.size > this.maxKeys) {
      const oldest = this.#buckets.keys().next().value
      if (oldest === undefined) break
      this.#buckets.delete(oldest)
    }
  }
}
