/**
 * The RateLimit and RateLimit-Policy fields (draft-ietf-httpapi-ratelimit-headers-11) parsed
 * with a maintained RFC 9651 Structured Field parser (structured-headers), never a regex.
 */
import { isInnerList, parseList } from 'structured-headers'

export interface RateLimitItem {
  readonly name: string
  readonly params: Record<string, unknown>
}

/** Each list member: its name (an SF String) and its parameters; Byte Sequences as Buffers. */
export function parseRateLimitField (value: string | null): RateLimitItem[] {
  if (value === null) throw new Error('the field is missing')
  return parseList(value).map((member) => {
    if (isInnerList(member)) throw new Error('an inner list where an item was expected')
    const [bare, params] = member
    if (typeof bare !== 'string') throw new Error(`the policy name is not an SF String: ${String(bare)}`)
    const out: Record<string, unknown> = {}
    for (const [k, v] of params) out[k] = v instanceof ArrayBuffer ? Buffer.from(v) : v
    return { name: bare, params: out }
  })
}

export function rateLimitOf (headers: Headers): { policy: RateLimitItem[], limit: RateLimitItem[] } {
  return { policy: parseRateLimitField(headers.get('ratelimit-policy')), limit: parseRateLimitField(headers.get('ratelimit')) }
}
