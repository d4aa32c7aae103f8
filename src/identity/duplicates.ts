/**
 * Headers that must be sent once. Node joins repeated custom headers into one string with
 * ", " and keeps only the first `Authorization`, so `x-user-id: victim` plus `x-user-id: r1`
 * would become the fresh id "victim, r1" (one new bucket per second value). The raw header
 * list is the only place the repetition is still visible.
 */

/** How many times `name` (lower case) appears in the raw header list. */
export function headerCount (rawHeaders: readonly string[], name: string): number {
  let n = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const h = rawHeaders[i]!
    if (h.length === name.length && h.toLowerCase() === name) n++
  }
  return n
}

/** Headers of which Node keeps the first and silently drops the rest (http.IncomingMessage). */
const FIRST_WINS = new Set(['age', 'authorization', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host',
  'if-modified-since', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'referer',
  'retry-after', 'server', 'user-agent'])

/**
 * True when `name` (lower case) was sent more than once. Joined values contain a comma, so a
 * value without one skips the scan; headers Node keeps only the first of are always scanned.
 */
export function isRepeated (value: string | string[] | undefined, rawHeaders: readonly string[], name: string): boolean {
  if (value === undefined) return false
  if (Array.isArray(value)) return value.length > 1
  if (!value.includes(',') && !FIRST_WINS.has(name)) return false
  return headerCount(rawHeaders, name) > 1
}

export function duplicateDetail (header: string): string {
  return `The ${header} header must be sent once; this request sends it more than once.`
}
