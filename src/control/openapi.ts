/**
 * The OpenAPI document's finishing: a description for every response, every error a route can
 * answer documented (400/401/404/415/503 as they apply), applied to each route as
 * @fastify/swagger converts it. The route schemas stay what validates and serializes.
 */
const OK: Readonly<Record<string, string>> = {
  'POST /v1/check': 'The decision (one check) or the decisions in order (several).',
  'GET /v1/buckets/:key': 'The bucket as it stands now; no token is spent.',
  'DELETE /v1/buckets/:key': 'The bucket was reset to full (existed: whether it had a row).',
  'GET /v1/policies': 'The live configuration.',
  'GET /v1/overrides': 'Every override in force.',
  'PUT /v1/overrides/:key': 'The override as saved.',
  'DELETE /v1/overrides/:key': 'The override was removed (removed: whether there was one).',
  'GET /healthz': 'The process is serving.',
  'GET /readyz': 'Ready: see which store decides (deciding).',
  'GET /metrics': 'Prometheus metrics, text exposition format.'
}

const ERRORS: Readonly<Record<string, string>> = {
  400: 'The request is not valid: the detail names the field and says why.',
  401: 'The admin token is missing or wrong: send "Authorization: Bearer <ADMIN_TOKEN>".',
  404: 'The admin API is disabled (ADMIN_TOKEN is unset).',
  415: 'The body is not JSON: send Content-Type: application/json.',
  503: 'PostgreSQL cannot be reached (and, for /v1/check, no fail mode can decide: FAIL_MODE=closed).'
}

type Schema = Record<string, unknown> & { response?: Record<string, Record<string, unknown>>, tags?: string[], body?: unknown }

export function describeResponses<S> ({ schema, url, route }: { schema: S, url: string, route: { method: string | string[] } }): { schema: S, url: string } {
  if (schema === undefined || schema === null) return { schema, url }
  const s = { ...(schema as Schema) }
  const method = Array.isArray(route.method) ? route.method[0]! : route.method
  const responses: Record<string, Record<string, unknown>> = { ...(s.response ?? {}) }
  const codes = new Set(Object.keys(responses))
  const admin = s.tags?.includes('admin') === true
  if (admin) for (const code of ['400', '401', '404', '503']) codes.add(code)
  if (s.body !== undefined) { codes.add('400'); codes.add('415') }
  if (codes.size === 0 || !codes.has('200')) codes.add('200')
  for (const code of codes) {
    const r = responses[code] ?? { $ref: 'problem#' }
    const fallback = code === '200' ? OK[`${method} ${url}`] ?? 'Success.' : code === '503' && url === '/readyz' ? 'Not ready: see which store is down.' : ERRORS[code] ?? 'Error.'
    // The problem schema's own description is generic: each route says what its error means.
    responses[code] = { ...r, description: typeof r.description === 'string' && r.description !== 'RFC 9457 problem details.' ? r.description : fallback }
  }
  s.response = responses
  return { schema: s as S, url }
}
