/**
 * Token-bucket arithmetic. Pure: no I/O and no clock reads, time is always a parameter.
 * The same formulas run in SQL (migrations/003) and Lua (src/stores/redis/scripts.ts);
 * keep them in step.
 */
import type { BucketSnapshot, Policy } from './domain.ts'

/**
 * Floating-point slack when comparing tokens with a cost. Refill is computed from elapsed
 * time in floating point, so "exactly k tokens after k/rate seconds" may come out as
 * k - 1e-12. Allowing that shortfall can overdraw a bucket by at most EPSILON in total (the
 * debt is carried), which no caller can turn into an extra request.
 */
export const EPSILON = 1e-9

/** Tokens the bucket holds at `nowMs`: refill since the snapshot, capped at capacity. */
export function tokensAt (snapshot: BucketSnapshot, policy: Policy, nowMs: number): number {
  const elapsedMs = nowMs - snapshot.atMs
  if (elapsedMs <= 0) return Math.min(snapshot.tokens, policy.capacity)
  return Math.min(policy.capacity, snapshot.tokens + (elapsedMs * policy.refillPerSecond) / 1000)
}

export function canPay (tokens: number, cost: number): boolean {
  return tokens + EPSILON >= cost
}

export interface Consumption {
  readonly allowed: boolean
  /** The bucket after the attempt; time never moves backwards. */
  readonly snapshot: BucketSnapshot
}

/** Refill to `nowMs`, then spend `cost` if the bucket can pay it. */
export function consume (snapshot: BucketSnapshot | null, policy: Policy, cost: number, nowMs: number): Consumption {
  const start = snapshot ?? { tokens: policy.capacity, atMs: nowMs }
  const atMs = Math.max(nowMs, start.atMs)
  const tokens = tokensAt(start, policy, atMs)
  if (canPay(tokens, cost)) return { allowed: true, snapshot: { tokens: tokens - cost, atMs } }
  return { allowed: false, snapshot: { tokens, atMs } }
}

/** Milliseconds until the bucket holds `cost` tokens (0 if it already does). */
export function msUntilAffordable (tokens: number, policy: Policy, cost: number): number {
  if (canPay(tokens, cost)) return 0
  return ((cost - tokens) * 1000) / policy.refillPerSecond
}

/**
 * Milliseconds until the bucket holds one more whole token than it does now (never beyond
 * capacity); 0 when it is full.
 */
export function msUntilNextToken (tokens: number, policy: Policy): number {
  if (tokens >= policy.capacity) return 0
  const next = Math.min(policy.capacity, Math.floor(Math.max(0, tokens) + EPSILON) + 1)
  return (Math.max(0, next - tokens) * 1000) / policy.refillPerSecond
}

/** Milliseconds until the bucket is full. */
export function msUntilFull (tokens: number, policy: Policy): number {
  if (tokens >= policy.capacity) return 0
  return ((policy.capacity - tokens) * 1000) / policy.refillPerSecond
}

/** How long a cached snapshot stays useful: after a full refill the bucket is full anyway. */
export function fullRefillSeconds (policy: Policy): number {
  return Math.max(1, Math.ceil(policy.capacity / policy.refillPerSecond))
}
