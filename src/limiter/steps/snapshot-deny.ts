/**
 * Step 2: a cached snapshot that, refilled to now, cannot pay the cost refuses at once
 * (`X-Data-Source: redis`). Consumption only lowers a bucket and refill is a fixed function of
 * time, so a stale snapshot never shows fewer tokens than the truth: a refusal read from it is
 * always right (docs/design.md, "Why a cached refusal is safe").
 */
import { makeDecision } from '../../core/decision.ts'
import type { Decision } from '../../core/domain.ts'
import type { BucketRequest, CacheRead } from '../../core/ports.ts'
import { canPay, tokensAt } from '../../core/token-bucket.ts'

/**
 * Redis refuses only if the bucket could not pay even this much later than our estimate of
 * the database clock: an estimate that runs early must not refuse a caller who has the tokens.
 * Anything closer is left to PostgreSQL, which is always right.
 */
export const DENY_MARGIN_MS = 2

export function snapshotDeny (read: CacheRead, request: BucketRequest, dbNowMs: number): Decision | null {
  if (read.kind !== 'snapshot') return null
  const { policy, cost } = request
  if (canPay(tokensAt(read, policy, dbNowMs + DENY_MARGIN_MS), cost)) return null
  return makeDecision(policy, cost, false, tokensAt(read, policy, dbNowMs), 'redis', 'redis')
}
