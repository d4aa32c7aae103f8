/**
 * Verified JWT identities: the caller id is a claim of a token whose signature, expiry and
 * (when configured) issuer and audience check out. Keys come from config only; tokens never
 * choose their own key or algorithm (no "jku", "jwk" or "none").
 */
import { createPublicKey, createSecretKey, type KeyObject } from 'node:crypto'
import { jwtVerify, type JWTPayload } from 'jose'
import { compatibleAlgorithms, type JwtConfig } from './schema.ts'


export type TokenResult =
  | { ok: true, payload: JWTPayload }
  | { ok: false, reason: 'missing-token' | 'invalid-token', detail: string }

const REASONS: Record<string, string> = {
  ERR_JWT_EXPIRED: 'it has expired',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'its signature does not verify',
  ERR_JOSE_ALG_NOT_ALLOWED: 'its algorithm is not accepted',
  ERR_JWS_INVALID: 'it is not a well-formed JWS',
  ERR_JWT_INVALID: 'it is not a well-formed JWT'
}

export interface TokenVerifier {
  readonly header: string
  verify: (raw: string | string[] | undefined) => Promise<TokenResult>
}

export function createTokenVerifier (config: JwtConfig): TokenVerifier {
  const key: KeyObject = config.secret !== undefined ? createSecretKey(Buffer.from(config.secret, 'utf8')) : createPublicKey(config.publicKey!)
  const algorithms = config.algorithms ?? compatibleAlgorithms(config.secret !== undefined ? 'secret' : key).slice(0, 1)
  const options = {
    algorithms,
    clockTolerance: config.clockToleranceSeconds,
    ...(config.issuer === undefined ? {} : { issuer: config.issuer }),
    ...(config.audience === undefined ? {} : { audience: config.audience })
  }
  const bearer = config.header === 'authorization'
  return {
    header: config.header,
    async verify (raw) {
      if (Array.isArray(raw)) raw = raw[0]
      let token = raw?.trim()
      if (bearer && token !== undefined) token = /^Bearer\s+(\S+)$/i.exec(token)?.[1]
      if (token === undefined || token === '') {
        return { ok: false, reason: 'missing-token', detail: bearer ? 'An "Authorization: Bearer <token>" header is required.' : `The ${config.header} header must hold a token.` }
      }
      try {
        const { payload } = await jwtVerify(token, key, options)
        return { ok: true, payload }
      } catch (err) {
        const e = err as { code?: string, claim?: string }
        const why = e.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' ? `its "${e.claim ?? '?'}" claim is not accepted` : REASONS[e.code ?? ''] ?? 'it cannot be verified'
        return { ok: false, reason: 'invalid-token', detail: `The bearer token is not valid: ${why}.` }
      }
    }
  }
}
