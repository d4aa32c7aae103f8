/**
 * The policy part of the configuration: named policies, route rules, tiers, allow and deny
 * lists, upstreams by prefix and identity sources. Shapes only; references between them are
 * checked by `checkPolicyConfig` so every error names the field that is wrong.
 * docs/policies.md documents each field with examples.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { isIP } from 'node:net'
import { z } from 'zod'
import { compilePathRule } from './path.ts'

const positive = z.number().positive()
export const headerName = z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name').transform((h) => h.toLowerCase())
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
  /** Defaults: limits.capacity, limits.refillPerSecond, limits.cost. */
  capacity: positive.optional(),
  refillPerSecond: positive.optional(),
  /** Tokens a request routed here costs unless its route says otherwise. */
  cost: positive.optional(),
  /** Decide, count and log, but always forward. */
  shadow: z.boolean().default(false)
})

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT'] as const

export const routeRule = z.strictObject({
  /** Any method when absent. */
  methods: z.array(z.string().transform((m) => m.toUpperCase()).pipe(z.enum(METHODS))).min(1).optional(),
  /** A prefix (`/api`) or a pattern with `*` (one segment) and a final `**` (the rest). */
  path: pathRule.default('/'),
  policy: policyName.default('default'),
  cost: positive.optional()
})

export const tiers = z.strictObject({
  /** Request header naming the caller's tier. Trust it only if something in front sets it. */
  header: headerName.optional(),
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

const JWT_ALGORITHMS = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const
export type JwtAlgorithm = typeof JWT_ALGORITHMS[number]

export const jwt = z.strictObject({
  /** Where the token is: `Authorization: Bearer <token>` by default, or a header holding it bare. */
  header: headerName.default('authorization'),
  /** Shared secret for HS256/384/512. Prefer JWT_SECRET in the environment to a file. */
  secret: z.string().min(32, 'must be at least 32 characters').optional(),
  /** PEM public key (SPKI) for RS*, PS*, ES* or EdDSA. */
  publicKey: z.string().optional(),
  /** Accepted algorithms; by default the one that fits the key. */
  algorithms: z.array(z.enum(JWT_ALGORITHMS)).min(1).optional(),
  /** The claim whose value is the caller id. */
  claim: z.string().min(1).default('sub'),
  issuer: z.string().optional(),
  audience: z.string().optional(),
  clockToleranceSeconds: z.number().min(0).max(300).default(5)
})

export const identityExtension = {
  /** Where the caller id comes from. */
  source: z.enum(['header', 'address', 'jwt']).default('header'),
  /** Addresses or CIDR ranges of proxies whose X-Forwarded-For is believed (source: address). */
  trustedProxies: z.array(z.string()).default([]),
  jwt: jwt.optional()
}

export const policySections = {
  policies: z.record(policyName, policyDefinition).default({}),
  routes: z.array(routeRule).default([]),
  tiers: tiers.prefault({}),
  access: access.prefault({}),
  upstreams: z.array(upstreamRoute).default([])
}

/** What checkPolicyConfig needs to see; a structural slice of Config. */
interface PolicyConfigView {
  limits: { capacity: number, refillPerSecond: number, cost: number }
  identity: { source: string, trustedProxies: string[], jwt?: z.output<typeof jwt> | undefined }
  policies: Record<string, z.output<typeof policyDefinition>>
  routes: Array<z.output<typeof routeRule>>
  tiers: z.output<typeof tiers>
}

interface Issue { path: Array<string | number>, message: string }

/** Parses a CIDR or plain address; null when malformed. */
export function parseAddressRange (value: string): { address: string, prefix: number, family: 'ipv4' | 'ipv6' } | null {
  const slash = value.indexOf('/')
  const address = slash < 0 ? value : value.slice(0, slash)
  const version = isIP(address)
  if (version === 0) return null
  const max = version === 4 ? 32 : 128
  const prefix = slash < 0 ? max : Number(value.slice(slash + 1))
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) return null
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' }
}

/** The algorithms a key can verify; the first is the default. */
export function compatibleAlgorithms (key: KeyObject | 'secret'): JwtAlgorithm[] {
  if (key === 'secret') return ['HS256', 'HS384', 'HS512']
  switch (key.asymmetricKeyType) {
    case 'rsa': return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
    case 'rsa-pss': return ['PS256', 'PS384', 'PS512']
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve
      return curve === 'secp384r1' ? ['ES384'] : curve === 'secp521r1' ? ['ES512'] : curve === 'prime256v1' ? ['ES256'] : []
    }
    case 'ed25519': return ['EdDSA']
    default: return []
  }
}

/** Cross-field rules: every referenced policy exists, no cost exceeds its capacity, keys parse. */
export function checkPolicyConfig (config: PolicyConfigView): Issue[] {
  const issues: Issue[] = []
  const known = new Set(['default', ...Object.keys(config.policies)])
  const list = [...known].join(', ')
  const capacityOf = (name: string): number => config.policies[name]?.capacity ?? config.limits.capacity
  const costOf = (name: string): number => config.policies[name]?.cost ?? config.limits.cost

  for (const [name, p] of Object.entries(config.policies)) {
    const cost = p.cost ?? config.limits.cost
    if (cost > capacityOf(name)) issues.push({ path: ['policies', name, 'cost'], message: `cost ${cost} exceeds capacity ${capacityOf(name)} (such a request could never pass)` })
  }
  // Every (route, tier) pair ends at some policy; its cost must fit that policy.
  const tierMaps = Object.values(config.tiers.sets)
  config.routes.forEach((route, i) => {
    if (!known.has(route.policy)) {
      issues.push({ path: ['routes', i, 'policy'], message: `unknown policy "${route.policy}"; known: ${list}` })
      return
    }
    for (const map of [{}, ...tierMaps] as Array<Record<string, string>>) {
      const target = map[route.policy] ?? route.policy
      if (!known.has(target)) continue // reported under tiers
      const cost = route.cost ?? costOf(target)
      if (cost > capacityOf(target)) {
        issues.push({ path: ['routes', i, 'cost'], message: `cost ${cost} exceeds the capacity ${capacityOf(target)} of policy "${target}" (such a request could never pass)` })
        break
      }
    }
  })
  for (const [tier, map] of Object.entries(config.tiers.sets)) {
    for (const [from, to] of Object.entries(map)) {
      if (!known.has(from)) issues.push({ path: ['tiers', 'sets', tier, from], message: `unknown policy "${from}"; known: ${list}` })
      if (!known.has(to)) issues.push({ path: ['tiers', 'sets', tier, from], message: `unknown policy "${to}"; known: ${list}` })
    }
  }

  config.identity.trustedProxies.forEach((value, i) => {
    if (parseAddressRange(value) === null) issues.push({ path: ['identity', 'trustedProxies', i], message: `"${value}" is not an IP address or CIDR range` })
  })
  const j = config.identity.jwt
  if (config.identity.source === 'jwt' && (j === undefined || (j.secret === undefined && j.publicKey === undefined))) {
    issues.push({ path: ['identity', 'jwt'], message: 'source "jwt" needs identity.jwt.secret (JWT_SECRET) or identity.jwt.publicKey (JWT_PUBLIC_KEY)' })
  }
  if (j !== undefined) {
    if (j.secret !== undefined && j.publicKey !== undefined) issues.push({ path: ['identity', 'jwt'], message: 'give either secret or publicKey, not both' })
    let key: KeyObject | 'secret' | null = j.secret !== undefined ? 'secret' : null
    if (j.publicKey !== undefined && j.publicKey.includes('PRIVATE KEY')) {
      issues.push({ path: ['identity', 'jwt', 'publicKey'], message: 'is a private key: give the gateway only the public key' })
    } else if (j.publicKey !== undefined) {
      try {
        key = createPublicKey(j.publicKey)
      } catch (err) {
        issues.push({ path: ['identity', 'jwt', 'publicKey'], message: `not a usable PEM public key: ${(err as Error).message}` })
      }
    }
    if (key !== null) {
      const fits = compatibleAlgorithms(key)
      if (fits.length === 0) issues.push({ path: ['identity', 'jwt', 'publicKey'], message: 'unsupported key type (use RSA, EC P-256/384/521 or Ed25519)' })
      for (const alg of j.algorithms ?? []) {
        if (!fits.includes(alg)) issues.push({ path: ['identity', 'jwt', 'algorithms'], message: `${alg} does not fit the configured ${key === 'secret' ? 'secret' : 'public key'}` })
      }
    }
  }
  return issues
}
