/**
 * The identity part of the configuration: where the caller id comes from (a header, the
 * client address behind trusted proxies, a verified JWT claim) and the checks across its
 * fields, so every error names the field that is wrong. docs/policies.md documents each field.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { isIP } from 'node:net'
import { z } from 'zod'

export const headerName = z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name').transform((h) => h.toLowerCase())

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

export const identitySection = z.strictObject({
  header: headerName.default('x-user-id'),
  /** Where the caller id comes from. */
  source: z.enum(['header', 'address', 'jwt']).default('header'),
  /** Addresses or CIDR ranges of proxies whose X-Forwarded-For is believed (source: address). */
  trustedProxies: z.array(z.string()).default([]),
  jwt: jwt.optional()
})

export type IdentityConfig = z.output<typeof identitySection>
export type JwtConfig = z.output<typeof jwt>

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

/** Cross-field rules: trusted proxies parse, a JWT source has a usable key that fits its algorithms. */
export function checkIdentityConfig (identity: IdentityConfig): Issue[] {
  const issues: Issue[] = []
  identity.trustedProxies.forEach((value, i) => {
    if (parseAddressRange(value) === null) issues.push({ path: ['identity', 'trustedProxies', i], message: `"${value}" is not an IP address or CIDR range` })
  })
  const j = identity.jwt
  if (identity.source === 'jwt' && (j === undefined || (j.secret === undefined && j.publicKey === undefined))) {
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
