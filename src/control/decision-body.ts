/** The JSON the control API answers for one check (POST /v1/check, the admin peek). */
import type { Decision } from '../core/domain.ts'
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
 * A check's answer. A shadow policy reports its decision as it is (the caller asked what the
 * bucket says); a caller on the deny list is refused, one on the allow list is never limited.
 */
export function admissionBody (a: Admission): Record<string, unknown> {
  switch (a.kind) {
    case 'limited': return decisionBody(a.decision)
    case 'forward': return a.decision === null ? UNLIMITED : decisionBody(a.decision)
    case 'deny-listed': return DENIED
    case 'unavailable': throw new Error('unreachable: answered as a 503')
  }
}

const UNLIMITED = { allowed: true, limit: null, remaining: null, reset_after_ms: 0, retry_after_ms: 0, source: 'allow-list', policy: null }
const DENIED = { allowed: false, limit: null, remaining: null, reset_after_ms: 0, retry_after_ms: 0, source: 'deny-list', policy: null }
