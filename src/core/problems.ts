/**
 * Every problem+json the gateway itself sends (RFC 9457), in one catalogue, like Fastify's
 * lib/errors.js: each kind has its status, its type and a builder for its detail. Both
 * listeners send only what `problem()` builds from this table, so a status or a wording is
 * changed in one place. Titles are the statuses' reason phrases.
 */
export const PROBLEM_TYPE = 'application/problem+json'
export const QUOTA_EXCEEDED = 'https://iana.org/assignments/http-problem-types#quota-exceeded'

export const TEMPORARY_REDUCED_CAPACITY = 'https://iana.org/assignments/http-problem-types#temporary-reduced-capacity'

/** A policy named in a 429's detail and `violated-policies`. */
export interface ViolatedPolicy { readonly name: string, readonly capacity: number, readonly windowSeconds: number }

export interface Problem {
  type: string
  title: string
  status: number
  detail: string
  [extension: string]: unknown
}

const TITLES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout'
}

interface Kind<A extends unknown[]> {
  readonly status: number
  readonly type?: string
  readonly detail: (...args: A) => string
  readonly extensions?: (...args: A) => Record<string, unknown>
}

const kind = <A extends unknown[]>(k: Kind<A>): Kind<A> => k
const say = (detail: string): string => detail

export const PROBLEMS = {
  /** The caller id is missing or malformed (the detail names the header and the rule). */
  CALLER_ID_INVALID: kind({ status: 400, detail: say }),
  /** An identity or tier header sent more than once (the detail names it). */
  DUPLICATE_HEADER: kind({ status: 400, detail: say }),
  /** A framework-level refusal of the request (control API validation); the detail is its message. */
  BAD_REQUEST: kind({ status: 400, detail: say }),
  MALFORMED_REQUEST: kind({ status: 400, detail: () => 'The request is not valid HTTP/1.1.' }),
  UPGRADE_WITH_BODY: kind({
    status: 400,
    detail: (upgrade: string) => `Upgrade to "${upgrade}" is not supported on a request with a body; send it without the Upgrade header.`
  }),
  /** The JWT identity source refused the token (the detail says why). */
  TOKEN_INVALID: kind({ status: 401, detail: say }),
  ADMIN_TOKEN_REQUIRED: kind({ status: 401, detail: () => 'A valid "Authorization: Bearer <ADMIN_TOKEN>" header is required.' }),
  CALLER_DENIED: kind({ status: 403, detail: () => 'This caller is not allowed to use this gateway.' }),
  PREFLIGHT_REFUSED: kind({ status: 403, detail: () => 'CORS preflight requests are not served by this gateway (proxy.preflight: refuse).' }),
  ADMIN_DISABLED: kind({ status: 404, detail: () => 'The admin API is disabled: set ADMIN_TOKEN to enable it.' }),
  NO_CONTROL_ROUTE: kind({ status: 404, detail: (method: string, url: string) => `No route ${method} ${url} on the control port.` }),
  /** TRACE while proxy.allowTrace is off (sent with Allow). */
  METHOD_NOT_ALLOWED: kind({ status: 405, detail: (method: string) => `${method} is not forwarded by this gateway.` }),
  /** A control route asked with a method it does not serve (sent with Allow). */
  CONTROL_METHOD_NOT_ALLOWED: kind({
    status: 405,
    detail: (method: string, path: string, allowed: string[]) => `${method} is not served on ${path}; it answers ${allowed.join(', ')}.`
  }),
  REQUEST_TIMEOUT: kind({ status: 408, detail: () => 'The request was not received in time.' }),
  CONTENT_TOO_LARGE: kind({ status: 413, detail: say }),
  UNSUPPORTED_MEDIA_TYPE: kind({ status: 415, detail: say }),
  /** `violated`: every policy that refused the request (none of them was charged), most restrictive first. */
  QUOTA_EXCEEDED: kind({
    status: 429,
    type: QUOTA_EXCEEDED,
    detail: (violated: readonly ViolatedPolicy[], retryAfterSeconds: number) =>
      `Rate limit exceeded for ${violated.length === 1 ? 'policy' : 'policies'} ${violated.map((v) => `"${v.name}" (${v.capacity} requests per ${v.windowSeconds} s)`).join(', ')}; retry in ${retryAfterSeconds} s.`,
    extensions: (violated: readonly ViolatedPolicy[]) => ({ 'violated-policies': violated.map((v) => v.name) })
  }),
  /** Forwarded CORS preflights from one client address beyond proxy.preflightLimit (sent with Retry-After). */
  PREFLIGHT_LIMITED: kind({
    status: 429,
    type: QUOTA_EXCEEDED,
    detail: (retryAfterSeconds: number) => `Too many CORS preflight requests from this address; retry in ${retryAfterSeconds} s.`,
    extensions: () => ({ 'violated-policies': ['preflight'] })
  }),
  HEADER_TOO_LARGE: kind({ status: 431, detail: (maxBytes: number) => `The request head is larger than ${maxBytes} bytes.` }),
  PROXY_INTERNAL: kind({ status: 500, detail: () => 'The gateway failed to handle this request.' }),
  CONTROL_INTERNAL: kind({ status: 500, detail: () => 'Internal error; see the gateway log.' }),
  UPSTREAM_UNREACHABLE: kind({ status: 502, detail: () => 'The upstream could not be reached or failed mid-response.' }),
  /** Both stores unreachable and FAIL_MODE=closed (sent with Retry-After): the IANA problem type for it. */
  STORES_UNAVAILABLE: kind({ status: 503, type: TEMPORARY_REDUCED_CAPACITY, detail: () => 'The rate limiter cannot reach its stores; retry shortly.' }),
  UPSTREAM_TIMEOUT: kind({ status: 504, detail: (timeoutMs: number) => `The upstream did not answer within ${timeoutMs} ms.` })
} as const

export type ProblemKind = keyof typeof PROBLEMS
type Args<K extends ProblemKind> = Parameters<(typeof PROBLEMS)[K]['detail']>

export function problem<K extends ProblemKind> (name: K, ...args: Args<K>): Problem {
  const k = PROBLEMS[name] as Kind<Args<K>>
  const body: Problem = { type: k.type ?? 'about:blank', title: TITLES[k.status] ?? 'Error', status: k.status, detail: k.detail(...args) }
  return k.extensions === undefined ? body : Object.assign(body, k.extensions(...args))
}

/** The FAIL_MODE=closed answer, the same on both listeners. */
export function storesUnavailable (retryAfterSeconds: number): { readonly body: Problem, readonly headers: Record<string, string> } {
  return { body: problem('STORES_UNAVAILABLE'), headers: { 'retry-after': String(retryAfterSeconds) } }
}

/** The catalogue's kind for a client error a framework raised with this status and message. */
export function clientProblem (status: number, message: string): Problem {
  if (status === 413) return problem('CONTENT_TOO_LARGE', message)
  if (status === 415) return problem('UNSUPPORTED_MEDIA_TYPE', message)
  const body = problem('BAD_REQUEST', message)
  if (status !== 400) { body.status = status; body.title = TITLES[status] ?? 'Error' }
  return body
}

/** A problem as the text of a raw HTTP/1.1 response, for sockets Fastify never saw. */
export function rawProblemResponse (p: Problem): string {
  const body = JSON.stringify(p)
  return `HTTP/1.1 ${p.status} ${p.title}\r\nContent-Type: ${PROBLEM_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}
