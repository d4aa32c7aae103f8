/** The one place a Decision is built: every step of the limiter and the admin peek call this. */
import type { Decider, Decision, DecisionSource, Policy, Verdict } from './domain.ts'
import { msUntilAffordable, msUntilFull, msUntilNextToken } from './token-bucket.ts'

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
    retryAfterMs: allowed || bucket === null ? 0 : retryAfterMs ?? msUntilAffordable(tokens, bucket, cost),
    nextTokenMs: bucket === null ? 0 : msUntilNextToken(tokens, bucket)
  }
}

/**
 * A concurrency policy's decision: `inFlight` requests of the caller in flight (this one
 * included when allowed) out of `policy.concurrency`; a refusal may retry in a second.
 */
export function makeConcurrencyDecision (policy: Policy, allowed: boolean, inFlight: number, source: DecisionSource, decidedBy: Decider): Decision {
  const limit = policy.concurrency ?? policy.capacity
  return {
    allowed,
    policy,
    cost: 1,
    tokens: Math.max(0, limit - inFlight),
    source,
    decidedBy,
    resetAfterMs: 0,
    retryAfterMs: allowed ? 0 : 1000,
    nextTokenMs: 0
  }
}

/** How many more requests of its cost a bucket can pay now: fewer is more restrictive. */
function headroom (d: Decision): number {
  return Math.floor((Math.max(0, d.tokens) + 1e-9) / d.cost)
}

/**
 * Most restrictive first: refusing buckets before paying ones (the longest wait first), then
 * the fewest requests left, then the longest wait for the next token.
 */
function restrictiveFirst (a: Decision, b: Decision): number {
  if (a.allowed !== b.allowed) return a.allowed ? 1 : -1
  if (!a.allowed) return b.retryAfterMs - a.retryAfterMs
  return headroom(a) - headroom(b) || b.nextTokenMs - a.nextTokenMs
}

/** The one place a Verdict is built: the request is allowed only if every bucket could pay. */
export function makeVerdict (decisions: readonly Decision[], userId: string): Verdict {
  const sorted = decisions.length === 1 ? decisions : [...decisions].sort(restrictiveFirst)
  const violated = sorted.filter((d) => !d.allowed)
  let retryAfterMs = 0
  for (const d of violated) if (d.retryAfterMs > retryAfterMs) retryAfterMs = d.retryAfterMs
  return { allowed: violated.length === 0, decisions: sorted, primary: sorted[0]!, violated, retryAfterMs, userId }
}
