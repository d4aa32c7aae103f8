/** Configuration as it may be shown (print-config, the start-up log): no secrets. */
import type { Config } from './schema.ts'

export const REDACTED = '[redacted]'

/** Fields whose whole value is a secret. */
const SECRET_FIELDS = new Set(['control.adminToken', 'identity.jwt.secret', 'proxy.partitionKeySecret'])

/** A URL with its password replaced; anything unparsable is returned as it is. */
export function redactUrl (value: string): string {
  // redis+cluster://h:p,h:p is not one URL: redact each userinfo by pattern.
  return value.replace(/(\/\/[^:/@\s]*:)[^@/\s]+@/g, `$1${REDACTED}@`)
}

/** A deep copy of the configuration with secrets redacted and passwords removed from URLs. */
export function redactConfig (config: Config): Record<string, unknown> {
  const walk = (value: unknown, path: string): unknown => {
    if (SECRET_FIELDS.has(path)) return value === undefined ? undefined : REDACTED
    if (typeof value === 'string') return /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? redactUrl(value) : value
    if (Array.isArray(value)) return value.map((v, i) => walk(v, `${path}.${i}`))
    if (typeof value === 'object' && value !== null) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v, path === '' ? k : `${path}.${k}`)]))
    }
    return value
  }
  return walk(config, '') as Record<string, unknown>
}

/** Leaf paths and values of a tree (arrays of scalars are leaves; arrays of objects are walked). */
export function leaves (tree: unknown, prefix = ''): Array<[string, unknown]> {
  if (typeof tree !== 'object' || tree === null) return [[prefix, tree]]
  if (Array.isArray(tree) && tree.every((v) => typeof v !== 'object' || v === null)) return [[prefix, tree]]
  const entries = Object.entries(tree)
  if (entries.length === 0) return [[prefix, tree]]
  return entries.flatMap(([k, v]) => leaves(v, prefix === '' ? k : `${prefix}.${k}`))
}
