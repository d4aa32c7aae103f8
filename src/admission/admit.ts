/**
 * Admission, apart from any transport: given an identified caller, the method, path and cost,
 * is the request refused outright, limited, or forwarded? Access lists, tier, route and
 * override are resolved here, once; the limiter decides; shadow policies and the closed fail
 * mode are mapped here. The proxy's onRequest and POST /v1/check both use it and only turn
 * the result into a reply.
 */
import { makeVerdict } from '../core/decision.ts'
import type { Decision, Verdict } from '../core/domain.ts'
import { BadRequest, StoreUnavailableError } from '../core/errors.ts'
import type { ConcurrencyLimiter, Slots } from '../limiter/concurrency.ts'
import type { Limiter } from '../limiter/limiter.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { OverrideTable } from '../policy/overrides.ts'
import { normalizePath } from '../policy/path.ts'
import type { LimitPolicy } from '../policy/policy-set.ts'
import type { Runtime } from './runtime.ts'

export interface AdmissionRequest {
  readonly id: string
  /** With a method (and path) the routes, tiers and access lists apply, as on the proxy. */
  readonly method?: string
  /** The raw request path (no query), as the client sent it. */
  readonly path?: string
  /** Overrides the route's cost. */
  readonly cost?: number
  /** Without a method: the policy by name (the default when absent). */
  readonly policyName?: string
  /** The tier header's value, if the tier comes from a header. */
  readonly tierHeader?: string | string[] | undefined
  /** Verified JWT claims (identity.source: jwt). */
  readonly claims?: Record<string, unknown> | null
}

/** What the request is charged against, before any bucket is touched. */
export type Screened =
  | {
    readonly kind: 'charge'
    readonly id: string
    /** policies[0] and costs[0]. */
    readonly policy: LimitPolicy
    readonly cost: number
    /** Every bucket the request is charged against (overrides applied), all or nothing. */
    readonly policies: readonly LimitPolicy[]
    readonly costs: readonly number[]
    /** Concurrency policies: a slot of each is held while the request is in flight. */
    readonly concurrency: readonly LimitPolicy[]
  }
  | { readonly kind: 'allow-listed' }
  | { readonly kind: 'deny-listed' }

export type Shadow = 'allowed' | 'would-block' | 'unavailable'

export type Admission =
  | { readonly kind: 'forward', readonly verdict: Verdict | null, readonly shadow: Shadow | null, readonly slots?: Slots | null }
  | { readonly kind: 'limited', readonly verdict: Verdict }
  | { readonly kind: 'deny-listed' }
  /** No store can decide and FAIL_MODE=closed: 503 with Retry-After. */
  | { readonly kind: 'unavailable', readonly retryAfterSeconds: number }

export interface AdmissionDeps {
  readonly limiter: Limiter
  readonly metrics: Metrics
  readonly overrides: { readonly table: OverrideTable }
  /** Concurrency slots (absent: concurrency policies are not enforced, as by POST /v1/check). */
  readonly concurrency?: ConcurrencyLimiter
}

const NONE: readonly LimitPolicy[] = Object.freeze([])
const ALLOW_LISTED: Screened = Object.freeze({ kind: 'allow-listed' })
const DENY_LISTED = Object.freeze({ kind: 'deny-listed' }) as Screened & Admission
const UNLIMITED: Admission = Object.freeze({ kind: 'forward', verdict: null, shadow: null })

/** Resolves what a request is charged against. Throws BadRequest for an unknown policy name. */
export function screen (runtime: Runtime, overrides: OverrideTable, request: AdmissionRequest): Screened {
  const set = runtime.policies
  const id = request.id
  let configured: readonly LimitPolicy[]
  let costs: readonly number[]
  let concurrency: readonly LimitPolicy[] = NONE
  if (request.method !== undefined) {
    if (set.isDenied(id)) return DENY_LISTED
    if (set.isAllowed(id)) return ALLOW_LISTED
    const tier = set.hasTiers
      ? set.tierOf(id, set.tierHeader === undefined ? undefined : request.tierHeader, set.tierClaim === undefined ? undefined : request.claims?.[set.tierClaim])
      : null
    const resolved = set.resolve(request.method, normalizePath(request.path ?? '/'), tier)
    configured = resolved.policies
    costs = resolved.costs
    concurrency = resolved.concurrency
  } else {
    const named = policyNamed(runtime, request.policyName)
    configured = [named]
    costs = [named.cost]
  }
  const policies = overrides.size === 0 ? configured : configured.map((p) => overrides.apply(p, id))
  if (request.cost !== undefined) costs = costs.map(() => request.cost!)
  return { kind: 'charge', id, policy: policies[0]!, cost: costs[0]!, policies, costs, concurrency }
}

/** Spends the screened request's tokens and says what becomes of it. */
export async function decide (deps: AdmissionDeps, screened: Screened, log: Logger): Promise<Admission> {
  if (screened.kind === 'deny-listed') {
    deps.metrics.rejectedRequests.inc({ reason: 'deny-list' })
    return DENY_LISTED
  }
  if (screened.kind === 'allow-listed') {
    deps.metrics.allowListed.inc()
    return UNLIMITED
  }
  const { policy, id, cost } = screened
  // Concurrency slots first: a caller with every slot taken is refused without spending tokens.
  let slots: Slots | null = null
  let held: Decision[] = []
  if (screened.concurrency.length > 0 && deps.concurrency !== undefined && !policy.shadow) {
    const got = await deps.concurrency.acquire(screened.concurrency, id)
    if (got.slots === null) return { kind: 'limited', verdict: makeVerdict(got.decisions, id) }
    slots = got.slots
    held = got.decisions
  }
  let verdict: Verdict | null = null
  try {
    verdict = screened.policies.length === 1
      ? makeVerdict([await deps.limiter.check(policy, id, cost, log)], id)
      : await deps.limiter.checkAll(screened.policies.map((p, i) => ({ policy: p, userId: id, cost: screened.costs[i]! })), id, log)
  } catch (err) {
    slots?.release()
    if (!(err instanceof StoreUnavailableError)) throw err
    if (!policy.shadow) return { kind: 'unavailable', retryAfterSeconds: err.retryAfterSeconds }
  }
  if (policy.shadow) {
    // Shadow mode: decided and counted like any other, reported, never enforced.
    const shadow: Shadow = verdict === null ? 'unavailable' : verdict.allowed ? 'allowed' : 'would-block'
    deps.metrics.shadowDecisions.inc({ policy: policy.name, result: shadow === 'would-block' ? 'would_block' : shadow })
    if (shadow === 'would-block') log.info({ user_id: id, policy: policy.name, cost, source: verdict!.primary.source }, 'shadow policy would block')
    return { kind: 'forward', verdict, shadow }
  }
  if (held.length > 0) verdict = makeVerdict([...verdict!.decisions, ...held], id)
  if (verdict!.allowed) return { kind: 'forward', verdict, shadow: null, slots }
  slots?.release()
  return { kind: 'limited', verdict: verdict! }
}

/** screen, then decide: one request through admission. */
export async function admit (deps: AdmissionDeps, runtime: Runtime, request: AdmissionRequest, log: Logger): Promise<Admission> {
  return await decide(deps, screen(runtime, deps.overrides.table, request), log)
}

/** The named policy of the live configuration (default when unnamed); 400 when unknown. */
export function policyNamed (runtime: Runtime, name: string | undefined): LimitPolicy {
  const set = runtime.policies
  if (name === undefined) return set.defaultPolicy
  const policy = set.policies.get(name)
  if (policy === undefined) throw new BadRequest(`Unknown policy "${name}"; known: ${[...set.policies.keys()].join(', ')}.`)
  if (policy.concurrency !== undefined) throw new BadRequest(`Policy "${name}" is a concurrency policy: it has no bucket to check or peek.`)
  return policy
}
