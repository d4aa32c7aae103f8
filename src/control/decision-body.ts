/** The JSON the control API answers for one check (POST /v1/check, the admin peek). */
import type { Decision, Verdict } from '../core/domain.ts'
import type { Admission } from '../admission/admit.ts'

export function decisionBody (d: Decision): Record<string, unknown> {
  return {
    allowed: d.allowed,
    limit: d.policy.capacity,
    remaining: Math.max(0, Math.floor(d.tokens + 1e-9)),
    reset_after_ms: Math.ceil(d.resetAfterMs),
    retry_after_ms: Math.ceil(d.retryAfterMs),
    source: d.source,
    policy: d.policy.name
  }
}

/**
 * A request's answer: the most restrictive bucket's fields at the top level (as for one
 * policy), the request's own verdict, and with several policies every bucket under `policies`.
 */
export function verdictBody (v: Verdict): Record<string, unknown> {
  const body = decisionBody(v.primary)
  body.allowed = v.allowed
  body.retry_after_ms = Math.ceil(v.retryAfterMs)
  if (v.decisions.length > 1) {
    body.policies = v.decisions.map(decisionBody)
    body.violated_policies = v.violated.map((d) => d.policy.name)
  }
  return body
}

/**
 * A check's answer. A shadow policy reports its decision as it is (the caller asked what the
 * bucket says); a caller on the deny list is refused, one on the allow list is never limited.
 */
export function admissionBody (a: Admission): Record<string, unknown> {
  switch (a.kind) {
    case 'limited': return verdictBody(a.verdict)
    case 'forward': return a.verdict === null ? UNLIMITED : verdictBody(a.verdict)
    case 'deny-listed': return DENIED
    case 'unavailable': throw new Error('unreachable: answered as a 503')
  }
}

const UNLIMITED = { allowed: true, limit: null, remaining: null, reset_after_ms: 0, retry_after_ms: 0, source: 'allow-list', policy: null }
const DENIED = { allowed: false, limit: null, remaining: null, reset_after_ms: 0, retry_after_ms: 0, source: 'deny-list', policy: null }
