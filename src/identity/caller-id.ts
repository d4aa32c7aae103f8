/**
 * Who is calling: the caller id from the configured header, validated before any bucket is
 * touched. Ids only ever reach SQL as bound parameters; these rules keep them readable in
 * logs and keys and within the table's VARCHAR(255).
 */
export const MAX_ID_BYTES = 255

export type IdentityResult =
  | { readonly ok: true, readonly id: string }
  | { readonly ok: false, readonly reason: 'missing' | 'too-long' | 'control-characters' | 'invalid-utf8', readonly detail: string }

const UTF8 = new TextDecoder('utf-8', { fatal: true })
// C0 and C1 controls and DEL. Node already refuses CR, LF and NUL in a header.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/ // eslint-disable-line no-control-regex
const NON_ASCII = /[^\u0000-\u007f]/ // eslint-disable-line no-control-regex

/**
 * Validates a raw header value. Node hands header bytes over as latin1, one char per byte,
 * so `raw.length` is the id's length in bytes and non-ASCII ids are decoded as UTF-8 here.
 */
export function parseCallerId (raw: string | string[] | undefined, header: string): IdentityResult {
  if (Array.isArray(raw)) raw = raw.join(', ')
  if (raw === undefined || raw.trim() === '') {
    return { ok: false, reason: 'missing', detail: `The ${header} header is required and identifies the caller.` }
  }
  if (raw.length > MAX_ID_BYTES) {
    return { ok: false, reason: 'too-long', detail: `The ${header} header must be at most ${MAX_ID_BYTES} bytes (got ${raw.length}).` }
  }
  let id = raw
  if (NON_ASCII.test(raw)) {
    try {
      id = UTF8.decode(Buffer.from(raw, 'latin1'))
    } catch {
      return { ok: false, reason: 'invalid-utf8', detail: `The ${header} header must be valid UTF-8.` }
    }
  }
  if (CONTROL.test(id)) {
    return { ok: false, reason: 'control-characters', detail: `The ${header} header must not contain control characters.` }
  }
  return { ok: true, id }
}

/** The same rules for ids given in a JSON body (check endpoint), where strings are already Unicode. */
export function parseKey (key: string): IdentityResult {
  const bytes = Buffer.byteLength(key, 'utf8')
  if (key.trim() === '') return { ok: false, reason: 'missing', detail: 'key must not be empty.' }
  if (bytes > MAX_ID_BYTES) return { ok: false, reason: 'too-long', detail: `key must be at most ${MAX_ID_BYTES} bytes (got ${bytes}).` }
  if (CONTROL.test(key)) return { ok: false, reason: 'control-characters', detail: 'key must not contain control characters.' }
  if (key.isWellFormed !== undefined && !key.isWellFormed()) return { ok: false, reason: 'invalid-utf8', detail: 'key must be valid Unicode.' }
  return { ok: true, id: key }
}
