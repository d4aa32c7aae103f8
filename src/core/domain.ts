/** The vocabulary shared by every layer: what a bucket is, what a decision says. */

/** A named limit: a bucket of `capacity` tokens refilled at `refillPerSecond`. */
export interface Policy {
  readonly name: string
  readonly capacity: number
  readonly refillPerSecond: number
  /**
   * Names the policy's cached snapshots when set (src/policy: name plus numbers), so that a
   * snapshot is only ever projected under the numbers it was computed with.
   */
  readonly cacheName?: string
  /** Refund the cost when the upstream was unreachable or timed out (502/504). */
  readonly refundUpstreamError?: boolean
  /** Refund the cost when the upstream answered 5xx. */
  readonly refund5xx?: boolean
  /**
   * Set for a concurrency policy: at most this many requests of one caller in flight (its
   * `capacity` is the same number; it has no token bucket).
   */
  readonly concurrency?: number
  /**
   * Who decides the bucket: `strict` (unset: PostgreSQL decides every allowance) or
   * `write-behind` (Redis decides every request, PostgreSQL is written behind every sync
   * interval). docs/design.md, "The write-behind mode", states each mode's bound.
   */
  readonly consistency?: Consistency
}

export type Consistency = 'strict' | 'write-behind'

/**
 * A bucket's state at one instant. `atMs` is on the database's clock (epoch milliseconds,
 * fractional), never the gateway's, so snapshots written by different gateways agree.
 */
export interface BucketSnapshot {
  readonly tokens: number
  readonly atMs: number
}

/** Where a decision came from; shown to callers as `X-Data-Source`. */
export type DecisionSource =
  | 'redis'
  | 'postgres'
  | 'new-user'
  | 'local'
  | 'redis-fallback'
  | 'local-fallback'
  | 'fail-open'

/**
 * Which store decided (the metrics' `decided_by`): a refusal read from a Redis snapshot and a
 * PostgreSQL decision on a cache hit both say `X-Data-Source: redis`, but only one of them
 * waited for PostgreSQL. `gateway`: decided in this process (the over-limit cache, a fail mode).
 */
export type Decider = 'postgres' | 'redis' | 'gateway'

export interface Decision {
  readonly allowed: boolean
  readonly policy: Policy
  readonly cost: number
  /** Tokens left after this decision (fractional). */
  readonly tokens: number
  /** Milliseconds until the bucket is full again. */
  readonly resetAfterMs: number
  /** Milliseconds until `cost` tokens are available (0 when allowed). */
  readonly retryAfterMs: number
  /**
   * Milliseconds until the bucket holds one more whole token than now (0 when it is full or no
   * bucket was kept): draft-11's `t` on an allowed response.
   */
  readonly nextTokenMs: number
  readonly source: DecisionSource
  readonly decidedBy: Decider
}

/**
 * Why a request was refused before any bucket was touched (400 caller id or a repeated
 * identity/tier header, 401 token, 403 deny list).
 */
export type RejectReason =
  | 'missing' | 'too-long' | 'control-characters' | 'invalid-utf8' | 'duplicate-header'
  | 'bad-address' | 'missing-token' | 'invalid-token' | 'deny-list'

/**
 * What one request's decisions add up to: every bucket it is charged against (most restrictive
 * first), allowed only if all of them could pay. Built only by makeVerdict (decision.ts).
 */
export interface Verdict {
  readonly allowed: boolean
  /** Every bucket of the request, most restrictive first (the refusing ones lead). */
  readonly decisions: readonly Decision[]
  /** decisions[0]: what the legacy X-RateLimit-* headers and X-Data-Source describe. */
  readonly primary: Decision
  /** The buckets that could not pay (empty when allowed). */
  readonly violated: readonly Decision[]
  /** The longest wait among the refusing buckets (0 when allowed). */
  readonly retryAfterMs: number
  /** The caller the buckets belong to (for the optional partition key). */
  readonly userId: string
}
