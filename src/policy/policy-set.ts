/**
 * One immutable, fully resolved policy configuration: which policy and cost apply to a
 * request (route rules, tiers), who is allowed or denied outright, and which upstream a path
 * goes to. Everything is resolved when the set is built, so a request costs a few lookups
 * and no allocation. Hot reload builds a new set and swaps it in whole (holder.ts).
 */
import type { Consistency, Policy } from '../core/domain.ts'
import { policyNames, type PolicyConfig } from './schema.ts'
import { compilePathRule, hasPrefix, type PathRule } from './path.ts'

/** A policy as configured: the bucket's numbers plus how requests routed to it are charged. */
export interface LimitPolicy extends Policy {
  /** Tokens per request unless the route says otherwise. */
  readonly cost: number
  /** Decide and report, never refuse. */
  readonly shadow: boolean
  /** Give the tokens back when the upstream was unreachable or timed out (502/504). */
  readonly refundUpstreamError: boolean
  /** Give the tokens back when the upstream answered 5xx. */
  readonly refund5xx: boolean
  /**
   * Names this policy's cached snapshots. It carries the numbers, so a snapshot computed
   * under other numbers (before a reload or an override) is never projected under these:
   * after a raise that would deny callers who have tokens.
   */
  readonly cacheName: string
  readonly consistency: Consistency
}

/** What applies to one request: the policies, their costs, and the route that chose them. */
export interface Resolution {
  /** Every policy the request is charged against, all or nothing (one, unless configured as a list). */
  readonly policies: readonly LimitPolicy[]
  /** The cost each of them is charged (the route's, else each policy's own). */
  readonly costs: readonly number[]
  /** policies[0] and costs[0]. */
  readonly policy: LimitPolicy
  readonly cost: number
  /** Concurrency policies of the list (slots, not buckets), usually none. */
  readonly concurrency: readonly LimitPolicy[]
  /** Index in `routes`, or -1 for the default. */
  readonly route: number
}

export interface UpstreamTarget {
  /** Literal path prefix; "/" for the default upstream. */
  readonly prefix: string
  readonly origin: string
  /** Path of the upstream URL, prepended when forwarding ("" for none). */
  readonly basePath: string
  readonly stripPrefix: boolean
}

interface CompiledRoute {
  readonly methods: ReadonlySet<string> | null
  readonly rule: PathRule
  readonly base: Resolution
  readonly byTier: ReadonlyMap<string, Resolution>
}

export function cacheNameOf (name: string, capacity: number, refillPerSecond: number): string {
  return `${name}@${capacity}/${refillPerSecond}`
}

export type RefundOn = 'upstream-error' | '5xx'

export function makeLimitPolicy (name: string, capacity: number, refillPerSecond: number, cost: number, shadow: boolean,
  refund: readonly RefundOn[] = [], consistency: Consistency = 'strict'): LimitPolicy {
  return {
    consistency,
    name,
    capacity,
    refillPerSecond,
    cost,
    shadow,
    refundUpstreamError: refund.includes('upstream-error'),
    refund5xx: refund.includes('5xx'),
    cacheName: cacheNameOf(name, capacity, refillPerSecond)
  }
}

/** The refund reasons a policy was built with. */
export function refundsOf (policy: LimitPolicy): RefundOn[] {
  return [...(policy.refundUpstreamError ? ['upstream-error' as const] : []), ...(policy.refund5xx ? ['5xx' as const] : [])]
}

export function parseUpstream (prefix: string, url: string, stripPrefix: boolean): UpstreamTarget {
  const u = new URL(url)
  const basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '')
  const cleanPrefix = prefix.length > 1 ? prefix.replace(/\/+$/, '') : prefix
  return { prefix: cleanPrefix, origin: u.origin, basePath, stripPrefix }
}

/**
 * The request target to send upstream, or null when it is unchanged (the common case).
 * `url` is the raw request target (path and query).
 */
export function upstreamUrl (target: UpstreamTarget, url: string): string | null {
  if (target.basePath === '' && !target.stripPrefix) return null
  let rest = url
  if (target.stripPrefix && target.prefix !== '/') {
    rest = url.slice(target.prefix.length)
    if (rest === '' || rest[0] === '?') rest = '/' + rest
  }
  return target.basePath + rest
}

export interface BuildOptions {
  /** Where requests that match no upstream prefix go. */
  readonly defaultUpstream: string
  readonly generation: number
}

export class PolicySet {
  readonly generation: number
  readonly loadedAt = new Date().toISOString()
  readonly policies: ReadonlyMap<string, LimitPolicy>
  readonly defaultPolicy: LimitPolicy
  readonly tierHeader: string | undefined
  readonly tierClaim: string | undefined
  /** tiers.trustHeaderFrom: any (else the tier header counts only from identity.trustedProxies). */
  readonly trustsTierHeaderFromAnyone: boolean
  readonly #callerTiers: ReadonlyMap<string, string>
  readonly #tierDefaults: ReadonlyMap<string, Resolution>
  readonly #routes: readonly CompiledRoute[]
  readonly #default: Resolution
  readonly #allow: ReadonlySet<string>
  readonly #deny: ReadonlySet<string>
  readonly #upstreams: readonly UpstreamTarget[]
  readonly defaultUpstream: UpstreamTarget
  /** Largest cost any route charges each policy: an override may not go below it. */
  readonly maxCost: ReadonlyMap<string, number>
  readonly #config: Pick<PolicyConfig, 'routes' | 'tiers' | 'upstreams' | 'access'>

  constructor (config: PolicyConfig, options: BuildOptions) {
    this.generation = options.generation
    this.#config = { routes: config.routes, tiers: config.tiers, upstreams: config.upstreams, access: config.access }
    const { limits } = config
    const policies = new Map<string, LimitPolicy>()
    const defaultDef = config.policies.default
    const consistency = limits.consistency ?? 'strict'
    policies.set('default', makeLimitPolicy('default', defaultDef?.capacity ?? limits.capacity, defaultDef?.refillPerSecond ?? limits.refillPerSecond, defaultDef?.cost ?? limits.cost, defaultDef?.shadow ?? false, defaultDef?.refund ?? [],
      defaultDef?.consistency ?? consistency))
    for (const [name, def] of Object.entries(config.policies)) {
      if (name === 'default') continue
      if (def.concurrency !== undefined) {
        const n = def.concurrency
        policies.set(name, { ...makeLimitPolicy(name, n, n, 1, false), concurrency: n })
        continue
      }
      policies.set(name, makeLimitPolicy(name, def.capacity ?? limits.capacity, def.refillPerSecond ?? limits.refillPerSecond, def.cost ?? limits.cost, def.shadow, def.refund ?? [], def.consistency ?? consistency))
    }
    this.policies = policies
    this.defaultPolicy = policies.get('default')!

    const maxCost = new Map<string, number>()
    const charge = (r: Resolution): Resolution => {
      r.policies.forEach((p, i) => maxCost.set(p.name, Math.max(maxCost.get(p.name) ?? 0, r.costs[i]!)))
      return r
    }
    const get = (name: string): LimitPolicy => {
      const p = policies.get(name)
      if (p === undefined) throw new Error(`unknown policy "${name}"`) // the schema already refused this
      return p
    }
    const tierNames = Object.keys(config.tiers.sets)
    const resolveFor = (policyNames: readonly string[], cost: number | undefined, route: number, tier: string | null): Resolution => {
      const targets = policyNames.map((name) => tier === null ? name : config.tiers.sets[tier]![name] ?? name)
      // A tier may map two of a list's policies to one: that bucket is charged once.
      const all = [...new Set(targets)].map(get)
      const chosen = all.filter((p) => p.concurrency === undefined)
      const costs = chosen.map((p) => cost ?? p.cost)
      return charge({ policies: chosen, costs, policy: chosen[0]!, cost: costs[0]!, route, concurrency: all.filter((p) => p.concurrency !== undefined) })
    }

    const defaultNames = config.defaultPolicy ?? ['default']
    this.#default = resolveFor(defaultNames, undefined, -1, null)
    this.#tierDefaults = new Map(tierNames.map((t) => [t, resolveFor(defaultNames, undefined, -1, t)]))
    this.#routes = config.routes.map((r, i) => ({
      methods: r.methods === undefined ? null : new Set(r.methods),
      rule: compilePathRule(r.path),
      base: resolveFor(policyNames(r.policy), r.cost, i, null),
      byTier: new Map(tierNames.map((t) => [t, resolveFor(policyNames(r.policy), r.cost, i, t)]))
    }))
    this.maxCost = maxCost

    this.tierHeader = config.tiers.header
    this.tierClaim = config.tiers.claim
    this.trustsTierHeaderFromAnyone = config.tiers.trustHeaderFrom === 'any'
    this.#callerTiers = new Map(Object.entries(config.tiers.callers))
    this.#allow = new Set(config.access.allow)
    this.#deny = new Set(config.access.deny)
    this.defaultUpstream = parseUpstream('/', options.defaultUpstream, false)
    this.#upstreams = config.upstreams.map((u) => parseUpstream(u.prefix, u.url, u.stripPrefix))
  }

  /** First matching route wins; the tier's substitutes apply; no match is the default. */
  resolve (method: string, path: string, tier: string | null): Resolution {
    for (const route of this.#routes) {
      if (route.methods !== null && !route.methods.has(method)) continue
      if (!route.rule.test(path)) continue
      return tier === null ? route.base : route.byTier.get(tier) ?? route.base
    }
    return tier === null ? this.#default : this.#tierDefaults.get(tier) ?? this.#default
  }

  /**
   * The caller's tier, if it names a configured one: the static map first (the operator's
   * word), then the JWT claim, then the header. Anything else is the default tier (null).
   */
  tierOf (id: string, header: string | string[] | undefined, claim: unknown): string | null {
    const fixed = this.#callerTiers.get(id)
    if (fixed !== undefined) return this.#tierDefaults.has(fixed) ? fixed : null
    if (typeof claim === 'string' && this.#tierDefaults.has(claim)) return claim
    if (typeof header === 'string' && this.#tierDefaults.has(header)) return header
    return null
  }

  get hasTiers (): boolean {
    return this.#tierDefaults.size > 0
  }

  isDenied (id: string): boolean {
    return this.#deny.size > 0 && this.#deny.has(id)
  }

  isAllowed (id: string): boolean {
    return this.#allow.size > 0 && this.#allow.has(id)
  }

  /** First configured prefix that the raw path starts with, else the default upstream. */
  upstreamFor (rawPath: string): UpstreamTarget {
    for (const u of this.#upstreams) if (hasPrefix(rawPath, u.prefix)) return u
    return this.defaultUpstream
  }

  /** The admin API's view (no secrets: identity settings are not part of it). */
  describe (): Record<string, unknown> {
    return {
      generation: this.generation,
      loaded_at: this.loadedAt,
      policies: [...this.policies.values()].map((p) => ({
        name: p.name,
        capacity: p.capacity,
        refill_per_second: p.refillPerSecond,
        cost: p.cost,
        shadow: p.shadow,
        refund: refundsOf(p),
        ...(p.concurrency === undefined ? { consistency: p.consistency ?? 'strict' } : { concurrency: p.concurrency }),
        max_route_cost: this.maxCost.get(p.name) ?? p.cost
      })),
      default_policy: this.#default.policies.map((p) => p.name),
      routes: this.#config.routes.map((r) => ({ methods: r.methods ?? null, path: r.path, policy: r.policy.length === 1 ? r.policy[0] : r.policy, ...(r.cost === undefined ? {} : { cost: r.cost }) })),
      tiers: { header: this.tierHeader ?? null, trust_header_from: this.#config.tiers.trustHeaderFrom, claim: this.tierClaim ?? null, callers: this.#config.tiers.callers, sets: this.#config.tiers.sets },
      access: { allow: this.#config.access.allow, deny: this.#config.access.deny },
      upstreams: [
        ...this.#upstreams.map((u) => ({ prefix: u.prefix, url: u.origin + u.basePath, strip_prefix: u.stripPrefix })),
        { prefix: '/', url: this.defaultUpstream.origin + this.defaultUpstream.basePath, strip_prefix: false }
      ]
    }
  }
}
