/**
 * The policy part of the configuration: named policies, route rules, tiers, allow and deny
 * lists and upstreams by prefix. Shapes only; references between them are
 * checked by `checkPolicyConfig` so every error names the field that is wrong.
 * docs/policies.md documents each field with examples.
 */
import { z } from 'zod'
import { compilePathRule } from './path.ts'
import { PROXIED_METHODS } from '../core/methods.ts'

const positive = z.number().positive()
const headerName = z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name').transform((h) => h.toLowerCase())
/** Names show up in response headers, metrics labels and cache keys: keep them plain. */
export const policyName = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 letters, digits, ".", "_" or "-"')
const callerId = z.string().min(1).max(255)

const pathRule = z.string().superRefine((value, ctx) => {
  try {
    compilePathRule(value)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message })
  }
})

export const policyDefinition = z.strictObject({
  /**
   * A concurrency policy: at most this many requests of one caller in flight across all
   * gateways (no token bucket: capacity, refillPerSecond, cost and refund do not apply).
   */
  concurrency: z.number().int().positive().optional(),
  /** Defaults: limits.capacity, limits.refillPerSecond, limits.cost. */
  capacity: positive.optional(),
  refillPerSecond: positive.optional(),
  /** Tokens a request routed here costs unless its route says otherwise. */
  cost: positive.optional(),
  /** Decide, count and log, but always forward. */
  shadow: z.boolean().default(false),
  /** strict or write-behind (default: limits.consistency); docs/design.md, "The write-behind mode". */
  consistency: z.enum(['strict', 'write-behind']).optional(),
  /**
   * When the tokens a request spent are given back: `upstream-error` (the upstream was
   * unreachable or timed out: 502/504), `5xx` (the upstream answered 5xx). None by default.
   */
  refund: z.array(z.enum(['upstream-error', '5xx'])).default([]).refine((l) => new Set(l).size === l.length, { message: 'names a reason twice' })
})

/** Exactly the methods the proxy accepts (src/core/methods.ts). */
const METHODS = PROXIED_METHODS as [string, ...string[]]

/**
 * One policy, or several charged together (all or nothing: the request passes only if every
 * bucket can pay). A list names each policy once.
 */
export const policyList = z.union([policyName, z.array(policyName).min(1).max(8)]).transform((p) => typeof p === 'string' ? [p] : p)
  .refine((list) => new Set(list).size === list.length, { message: 'names a policy twice' })

/** The names a route or the default charges, as a list. */
export function policyNames (p: string | readonly string[]): readonly string[] {
  return typeof p === 'string' ? [p] : p
}

export const routeRule = z.strictObject({
  /** Any method when absent. */
  methods: z.array(z.string().transform((m) => m.toUpperCase()).pipe(z.enum(METHODS))).min(1).optional(),
  /** A prefix (`/api`) or a pattern with `*` (one segment) and a final `**` (the rest). */
  path: pathRule.default('/'),
  /** A policy name or a list of them (`[burst, hourly, monthly]`). */
  policy: policyList.default(['default']),
  cost: positive.optional()
})

export const tiers = z.strictObject({
  /** Request header naming the caller's tier. Trust it only if something in front sets it. */
  header: headerName.optional(),
  /**
   * Whose tier header is believed: `trusted-proxies` (default: only a peer listed in
   * identity.trustedProxies; from anyone else the header is ignored) or `any` client.
   */
  trustHeaderFrom: z.enum(['trusted-proxies', 'any']).default('trusted-proxies'),
  /** JWT claim naming the tier (identity.source: jwt). */
  claim: z.string().min(1).optional(),
  /** Static caller id → tier map; wins over the header and the claim. */
  callers: z.record(callerId, z.string().min(1)).default({}),
  /** Per tier: which policy replaces which (`default: gold`); unlisted ones stay. */
  sets: z.record(z.string().min(1), z.record(policyName, policyName)).default({})
})

export const access = z.strictObject({
  /** Never limited; forwarded without touching a bucket. */
  allow: z.array(callerId).default([]),
  /** Always refused with 403. Wins over allow. */
  deny: z.array(callerId).default([])
})

const httpUrl = z.string().refine((value) => {
  try {
    const u = new URL(value)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.search === '' && u.hash === ''
  } catch {
    return false
  }
}, { message: 'must be an http:// or https:// URL without query or fragment' })

export const upstreamRoute = z.strictObject({
  /** Literal path prefix, on segment boundaries. */
  prefix: z.string().regex(/^\/[^?#*]*$/, 'must start with "/" and contain no "?", "#" or "*"'),
  url: httpUrl,
  /** Remove the prefix before forwarding (`/files/a` → `/a`). */
  stripPrefix: z.boolean().default(false)
})



export const policySections = {
  policies: z.record(policyName, policyDefinition).default({}),
  /** What a request no route matches is charged: a policy or a list of them (default: `default`). */
  defaultPolicy: policyList.default(['default']),
  routes: z.array(routeRule).default([]),
  tiers: tiers.prefault({}),
  access: access.prefault({}),
  upstreams: z.array(upstreamRoute).default([])
}

/** What the policy layer reads of the configuration (a structural slice of Config). */
export interface PolicyConfig {
  limits: { capacity: number, refillPerSecond: number, cost: number, consistency?: 'strict' | 'write-behind' }
  upstreams: Array<z.output<typeof upstreamRoute>>
  access: z.output<typeof access>
  policies: Record<string, z.output<typeof policyDefinition>>
  defaultPolicy: readonly string[]
  routes: Array<z.output<typeof routeRule>>
  tiers: z.output<typeof tiers>
}

export interface Issue { path: Array<string | number>, message: string }



/** Cross-field rules: every referenced policy exists and no cost exceeds its capacity. */
export function checkPolicyConfig (config: PolicyConfig): Issue[] {
  const issues: Issue[] = []
  const known = new Set(['default', ...Object.keys(config.policies)])
  const list = [...known].join(', ')
  const capacityOf = (name: string): number => config.policies[name]?.capacity ?? config.limits.capacity
  const costOf = (name: string): number => config.policies[name]?.cost ?? config.limits.cost

  const isConcurrency = (name: string): boolean => config.policies[name]?.concurrency !== undefined
  for (const [name, p] of Object.entries(config.policies)) {
    if (p.concurrency !== undefined) {
      if (p.consistency !== undefined) issues.push({ path: ['policies', name, 'consistency'], message: 'a concurrency policy has no token bucket to write behind' })
      if (name === 'default') issues.push({ path: ['policies', name, 'concurrency'], message: 'the default policy is a token bucket; name a concurrency policy of its own' })
      for (const field of ['capacity', 'refillPerSecond', 'cost', 'shadow'] as const) {
        if (field === 'shadow' ? p.shadow : p[field] !== undefined) issues.push({ path: ['policies', name, field], message: `a concurrency policy has no ${field}` })
      }
      if (p.refund.length > 0) issues.push({ path: ['policies', name, 'refund'], message: 'a concurrency policy has nothing to refund' })
      continue
    }
    const cost = p.cost ?? config.limits.cost
    if (cost > capacityOf(name)) issues.push({ path: ['policies', name, 'cost'], message: `cost ${cost} exceeds capacity ${capacityOf(name)} (such a request could never pass)` })
  }
  // Every (route, tier) pair ends at some policies; the cost must fit each of them.
  const tierMaps = Object.values(config.tiers.sets)
  const shadowOf = (name: string): boolean => config.policies[name]?.shadow ?? false
  const checkList = (names: readonly string[], cost: number | undefined, at: Array<string | number>): void => {
    const unknown = names.filter((n) => !known.has(n))
    if (unknown.length > 0) {
      issues.push({ path: [...at, 'policy'], message: `unknown policy "${unknown[0]!}"; known: ${list}` })
      return
    }
    for (const map of [{}, ...tierMaps] as Array<Record<string, string>>) {
      const targets = names.map((n) => map[n] ?? n)
      if (targets.some((n) => !known.has(n))) continue // reported under tiers
      if (targets.every(isConcurrency)) {
        issues.push({ path: [...at, 'policy'], message: `names only concurrency policies (${targets.join(', ')}); add at least one rate policy` })
        return
      }
      const rates = targets.filter((n) => !isConcurrency(n))
      if (new Set(rates.map(shadowOf)).size > 1) {
        issues.push({ path: [...at, 'policy'], message: `mixes shadow and enforced policies (${targets.join(', ')}); a request is either enforced or shadowed` })
        return
      }
      for (const target of rates) {
        const c = cost ?? costOf(target)
        if (c > capacityOf(target)) {
          issues.push({ path: [...at, 'cost'], message: `cost ${c} exceeds the capacity ${capacityOf(target)} of policy "${target}" (such a request could never pass)` })
          return
        }
      }
    }
  }
  checkList(config.defaultPolicy, undefined, ['defaultPolicy'])
  config.routes.forEach((route, i) => { checkList(route.policy, route.cost, ['routes', i]) })
  for (const [tier, map] of Object.entries(config.tiers.sets)) {
    for (const [from, to] of Object.entries(map)) {
      if (!known.has(from)) issues.push({ path: ['tiers', 'sets', tier, from], message: `unknown policy "${from}"; known: ${list}` })
      if (!known.has(to)) issues.push({ path: ['tiers', 'sets', tier, from], message: `unknown policy "${to}"; known: ${list}` })
    }
  }

  return issues
}
