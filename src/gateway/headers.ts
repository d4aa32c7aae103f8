/**
 * Rate-limit response headers: IETF httpapi ratelimit-headers draft-11 (`RateLimit-Policy`,
 * `RateLimit`, Structured Field lists), the legacy `X-RateLimit-*` trio, and the seed's
 * `X-Data-Source`. Upstream headers of these names are dropped and replaced.
 */
import type { Decision, Policy } from '../domain.ts'

export const LIMIT_HEADERS = ['x-data-source', 'ratelimit-policy', 'ratelimit', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'x-ratelimit-shadow'] as const

/** The window a policy's quota refers to: the time to refill an empty bucket, whole seconds. */
export function windowSeconds (policy: Policy): number {
  return Math.max(1, Math.ceil(policy.capacity / policy.refillPerSecond))
}

/** Structured Field string: the policy name is quoted, with `"` and `\` escaped. */
function sfString (value: string): string {
  return '"' + value.replace(/[\\"]/g, '\\$&') + '"'
}

export function rateLimitHeaders (d: Decision): Record<string, string> {
  const name = sfString(d.policy.name)
  const remaining = Math.max(0, Math.floor(d.tokens + 1e-9))
  const reset = Math.ceil(d.resetAfterMs / 1000)
  const headers: Record<string, string> = {
    'x-data-source': d.source,
    'ratelimit-policy': `${name};q=${d.policy.capacity};w=${windowSeconds(d.policy)}`,
    ratelimit: `${name};r=${remaining};t=${reset}`,
    'x-ratelimit-limit': String(d.policy.capacity),
    'x-ratelimit-remaining': String(remaining),
    'x-ratelimit-reset': String(reset)
  }
  if (!d.allowed) headers['retry-after'] = String(retryAfterSeconds(d.retryAfterMs))
  return headers
}

/** Whole seconds, at least 1: a client retrying after this many seconds can pay the cost. */
export function retryAfterSeconds (ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}
