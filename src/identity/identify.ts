/**
 * Who is calling, by the configured source: a header (the default), the client address
 * (X-Forwarded-For believed only from trusted proxies), or a claim of a verified JWT.
 * Whatever the source, the id passes the same rules as a header id before touching a bucket.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { IdentityConfig } from './schema.ts'
import { clientAddress, trustList } from './client-address.ts'
import { parseCallerId, parseKey } from './caller-id.ts'
import { createTokenVerifier } from './jwt.ts'
import { duplicateDetail, isRepeated } from './duplicates.ts'

export type Identified =
  | { readonly ok: true, readonly id: string, readonly claims: Record<string, unknown> | null }
  | { readonly ok: false, readonly status: 400 | 401, readonly reason: string, readonly detail: string }

/** `rawHeaders` (request.raw.rawHeaders) reveals a repeated identity header that Node joined or dropped. */
export type Identifier = (headers: IncomingHttpHeaders, peer: string | undefined, rawHeaders: readonly string[]) => Identified | Promise<Identified>

/** The refusal of a request that names its caller twice. */
export function duplicateHeader (header: string): Identified {
  return { ok: false, status: 400, reason: 'duplicate-header', detail: duplicateDetail(header) }
}

export function createIdentifier (identity: IdentityConfig): Identifier {
  switch (identity.source) {
    case 'header': {
      const header = identity.header
      return (headers, _peer, rawHeaders) => {
        const value = headers[header]
        if (isRepeated(value, rawHeaders, header)) return duplicateHeader(header)
        const r = parseCallerId(value, header)
        return r.ok ? { ok: true, id: r.id, claims: null } : { ok: false, status: 400, reason: r.reason, detail: r.detail }
      }
    }
    case 'address': {
      const trusted = identity.trustedProxies.length === 0 ? null : trustList(identity.trustedProxies)
      return (headers, peer) => {
        const r = clientAddress(peer, headers['x-forwarded-for'], trusted)
        return r.ok ? { ok: true, id: r.address, claims: null } : { ok: false, status: 400, reason: 'bad-address', detail: r.detail }
      }
    }
    case 'jwt': {
      const verifier = createTokenVerifier(identity.jwt!)
      const claim = identity.jwt!.claim
      return async (headers, _peer, rawHeaders) => {
        const token = headers[verifier.header]
        if (isRepeated(token, rawHeaders, verifier.header)) return duplicateHeader(verifier.header)
        const r = await verifier.verify(token)
        if (!r.ok) return { ok: false, status: 401, reason: r.reason, detail: r.detail }
        const value = r.payload[claim]
        const id = typeof value === 'string' ? parseKey(value) : typeof value === 'number' ? parseKey(String(value)) : null
        if (id === null || !id.ok) {
          return { ok: false, status: 401, reason: 'invalid-token', detail: `The bearer token's "${claim}" claim must be a caller id (a non-empty string of at most 255 bytes without control characters).` }
        }
        return { ok: true, id: id.id, claims: r.payload }
      }
    }
  }
}
