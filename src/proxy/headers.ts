/**
 * Rate-limit response headers: IETF httpapi ratelimit-headers draft-11 (`RateLimit-Policy`,
 * `RateLimit`, Structured Field lists), the legacy `X-RateLimit-*` trio, and the seed's
 * `X-Data-Source`. Upstream headers of these names are dropped and replaced.
 */
import { createHmac } from 'node:crypto'
import type { Decision, Policy, Verdict } from '../core/domain.ts'

export const LIMIT_HEADERS = ['x-data-source', 'ratelimit-policy', 'ratelimit', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'x-ratelimit-shadow'] as const

/**
 * Hop-by-hop request headers (RFC 9110 §7.6.1) that are about the client's connection to us,
 * not the request: never forwarded. undici refuses several of them outright (`Keep-Alive`,
 * `Upgrade`, `Expect`), which turned an HTTP/1.0 client's `Keep-Alive` or curl's
 * `Expect: 100-continue` on a large upload into a 502. (Node answers the `100 Continue` itself;
 * the forwarder drops `Connection`, the headers it names, and `Transfer-Encoding` itself.)
 */
export const HOP_BY_HOP = ['keep-alive', 'upgrade', 'expect', 'proxy-connection', 'proxy-authorization', 'te', 'trailer'] as const

/**
 * Drops the hop-by-hop headers of an upstream response: they describe the gateway's connection
 * to the upstream, and Node writes the client connection's own. Passed on, an upstream's
 * `Connection: close` (nginx sends it every 100 requests by default) would close the client's
 * keep-alive connection too. `Keep-Alive` goes first and `Connection` second: upstreams send them
 * last, and deleting an object's last properties keeps V8's fast layout.
 */
export function dropHopByHop (headers: Record<string, unknown>): void {
  if (headers['keep-alive'] !== undefined) delete headers['keep-alive']
  const connection = headers.connection
  if (connection === undefined) return
  delete headers.connection
  if (typeof connection !== 'string' || connection === 'keep-alive' || connection === 'close') return
  // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
  for (const name of connection.split(',')) {
    const n = name.trim().toLowerCase()
    if (n !== '' && headers[n] !== undefined) delete headers[n]
  }
}

/** Request headers the gateway never passes upstream. */
export const NOT_FORWARDED = [...LIMIT_HEADERS, ...HOP_BY_HOP] as const

/** The window a policy's quota refers to: the time to refill an empty bucket, whole seconds. */
export function windowSeconds (policy: Policy): number {
  return Math.max(1, Math.ceil(policy.capacity / policy.refillPerSecond))
}

/** Structured Field string: the policy name is quoted, with `"` and `\\` escaped. */
function sfString (value: string): string {
  return '"' + value.replace(/[\\"]/g, '\\$&') + '"'
}

interface PolicyHeaders { readonly quotedName: string, readonly policy: string, readonly limit: string }

// What a policy contributes to every response, computed once per policy object (policies are
// rebuilt only on reload or when an override changes, so this never grows without bound).
const perPolicy = new WeakMap<Policy, PolicyHeaders>()

function policyHeaders (p: Policy): PolicyHeaders {
  let h = perPolicy.get(p)
  if (h === undefined) {
    const quotedName = sfString(p.name)
    // A concurrency policy counts requests in flight: no window (draft-11's quota unit for it).
    const policy = p.concurrency === undefined ? `${quotedName};q=${p.capacity};w=${windowSeconds(p)}` : `${quotedName};q=${p.concurrency};qu="concurrent-requests"`
    h = { quotedName, policy, limit: String(p.capacity) }
    perPolicy.set(p, h)
  }
  return h
}

/**
 * draft-11's optional `pk` parameter: a Byte Sequence identifying the partition (the policy's
 * bucket of this caller) without revealing the caller id: HMAC-SHA256 under a configured
 * secret (proxy.partitionKeySecret), truncated to 16 bytes. Without the secret no one can tell
 * which caller a key belongs to, or link one caller's keys across policies.
 */
export class PartitionKeys {
  readonly #secret: string

  constructor (secret: string) {
    this.#secret = secret
  }

  of (policy: string, userId: string): string {
    const digest = createHmac('sha256', this.#secret).update(policy).update('\0').update(userId).digest()
    return ':' + digest.subarray(0, 16).toString('base64') + ':'
  }
}

/** Whole seconds of draft-11's `t` for one bucket: until the cost can be paid (refused), else until the next whole token. */
function effectiveWindow (d: Decision): number {
  return d.allowed ? Math.ceil(d.nextTokenMs / 1000) : retryAfterSeconds(d.retryAfterMs)
}

function remainingOf (d: Decision): string {
  return String(Math.max(0, Math.floor(d.tokens + 1e-9)))
}

function rateLimitItem (d: Decision, verdict: Verdict, pk: PartitionKeys | null): string {
  // A concurrency slot frees when a request ends, not after a time: `t` only on a refusal (retry in 1 s).
  const item = d.policy.concurrency !== undefined && d.allowed
    ? `${policyHeaders(d.policy).quotedName};r=${remainingOf(d)}`
    : `${policyHeaders(d.policy).quotedName};r=${remainingOf(d)};t=${effectiveWindow(d)}`
  return pk === null ? item : `${item};pk=${pk.of(d.policy.name, verdict.userId)}`
}

/**
 * Sets the verdict's headers on `target` (an upstream response's headers, or a fresh object):
 * every bucket in `RateLimit-Policy` and `RateLimit` (SF lists, most restrictive first), the
 * legacy trio for the most restrictive one, and Retry-After (the longest wait) on a refusal.
 */
export function writeRateLimitHeaders (target: Record<string, unknown>, verdict: Verdict, pk: PartitionKeys | null = null): void {
  const primary = verdict.primary
  const decisions = verdict.decisions
  const p = policyHeaders(primary.policy)
  const remaining = remainingOf(primary)
  target['x-data-source'] = primary.source
  if (decisions.length === 1) {
    target['ratelimit-policy'] = p.policy
    target.ratelimit = rateLimitItem(primary, verdict, pk)
  } else {
    let policy = p.policy
    let limit = rateLimitItem(primary, verdict, pk)
    for (let i = 1; i < decisions.length; i++) {
      policy += ', ' + policyHeaders(decisions[i]!.policy).policy
      limit += ', ' + rateLimitItem(decisions[i]!, verdict, pk)
    }
    target['ratelimit-policy'] = policy
    target.ratelimit = limit
  }
  target['x-ratelimit-limit'] = p.limit
  target['x-ratelimit-remaining'] = remaining
  target['x-ratelimit-reset'] = String(Math.ceil(primary.resetAfterMs / 1000))
  if (!verdict.allowed) target['retry-after'] = String(retryAfterSeconds(verdict.retryAfterMs))
}

export function rateLimitHeaders (verdict: Verdict, pk: PartitionKeys | null = null): Record<string, string> {
  const headers: Record<string, string> = {}
  writeRateLimitHeaders(headers, verdict, pk)
  return headers
}

/** Whole seconds, at least 1: a client retrying after this many seconds can pay the cost. */
export function retryAfterSeconds (ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}
