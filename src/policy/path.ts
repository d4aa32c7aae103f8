/**
 * Path rules: prefixes and patterns compiled once at config load, and the normalisation that
 * keeps a caller from slipping past a stricter rule by spelling the same path differently
 * (`/%61pi/x`, `/api//x`, `/./api/x`). Pure; no I/O.
 */

/** The path part of a request target (no query string), as sent. */
export function pathOf (url: string): string {
  const q = url.indexOf('?')
  return q < 0 ? url : url.slice(0, q)
}

const NEEDS_WORK = /%|\/\/|\/\.(?:\/|\.?$|\.\/)/

/**
 * The path rules are matched against: percent-escapes decoded (except an encoded `/`, which
 * stays `%2F` inside its segment), empty and `.` segments dropped, `..` applied. Paths that
 * need none of this (almost all) are returned as they are, without allocating.
 */
export function normalizePath (path: string): string {
  if (!NEEDS_WORK.test(path)) return path
  const out: string[] = []
  for (const raw of path.split('/')) {
    if (raw === '' || raw === '.') continue
    let segment = raw
    if (raw.includes('%')) {
      try {
        segment = decodeURIComponent(raw).replaceAll('/', '%2F')
      } catch {
        segment = raw // malformed escape: matched literally, and the proxy refuses it anyway
      }
    }
    if (segment === '..') out.pop()
    else if (segment !== '.') out.push(segment)
  }
  const trailing = path.endsWith('/') && out.length > 0 ? '/' : ''
  return '/' + out.join('/') + trailing
}

export interface PathRule {
  readonly source: string
  /** Tests a normalised path. */
  readonly test: (path: string) => boolean
}

const SPECIAL = /[.+?^${}()|[\]\\]/g

/**
 * Compiles a rule. Without `*` it is a prefix on segment boundaries: `/api` matches `/api`,
 * `/api/` and `/api/x` but not `/apix`. With `*` it is a whole-path pattern: `*` is exactly
 * one segment, and a final `**` is any number of further segments (including none).
 */
export function compilePathRule (source: string): PathRule {
  if (!source.startsWith('/')) throw new Error('must start with "/"')
  if (!source.includes('*')) {
    const prefix = source.length > 1 && source.endsWith('/') ? source.slice(0, -1) : source
    if (prefix === '/') return { source, test: () => true }
    return {
      source,
      test: (path) => path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */)
    }
  }
  const segments = source.split('/').slice(1)
  let pattern = ''
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!
    const last = i === segments.length - 1
    if (segment === '**') {
      if (!last) throw new Error('"**" may only be the last segment')
      pattern += '(?:/.*)?'
    } else if (segment.includes('**')) {
      throw new Error('"**" must be a whole segment')
    } else {
      pattern += '/' + segment.split('*').map((part) => part.replace(SPECIAL, '\\$&')).join('[^/]+')
    }
  }
  const re = new RegExp('^' + pattern + '/?$')
  return { source, test: (path) => re.test(path) }
}

/** Literal prefix test on the raw path (upstream routing), on segment boundaries. */
export function hasPrefix (path: string, prefix: string): boolean {
  if (prefix === '/' || prefix === '') return true
  return path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47)
}
