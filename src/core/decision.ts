/** The one place a Decision is built: every step of the limiter and the admin peek call this. */
import type { Decider, Decision, DecisionSource, Policy } from './domain.ts'
import { msUntilAffordable, msUntilFull } from './token-bucket.ts'

/**
 * `bucket` is the arithmetic the tokens follow: the policy itself, a fail-mode share of it, or
 * null when no bucket was kept (fail-open), which reports nothing to wait for.
 * `retryAfterMs` overrides the computed wait (a cost no local share can ever pay).
 */
export function makeDecision (policy: Policy, cost: number, allowed: boolean, tokens: number, source: DecisionSource,
  decidedBy: Decider, bucket: Policy | null = policy, retryAfterMs?: number): Decision {
  return {
    allowed,
    policy,
    cost,
    tokens,
    source,
    decidedBy,
    resetAfterMs: bucket === null ? 0 : msUntilFull(tokens, bucket),
    retryAfterMs: allowed || bucket === null ? 0 : retryAfterMs ?? msUntilAffordable(tokens, bucket, cost)
  }
}
