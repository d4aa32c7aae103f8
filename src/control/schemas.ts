/** JSON schemas of the control API; they validate requests and generate the OpenAPI document. */
export const problemSchema = {
  $id: 'problem',
  type: 'object',
  description: 'RFC 9457 problem details.',
  properties: {
    type: { type: 'string' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' }
  }
}

const bucket = {
  type: 'object',
  required: ['allowed', 'limit', 'remaining', 'reset_after_ms', 'retry_after_ms', 'source', 'policy'],
  properties: {
    allowed: { type: 'boolean' },
    limit: { type: 'number', nullable: true, description: 'Bucket capacity (null for a caller on the allow or deny list: no bucket).' },
    remaining: { type: 'integer', nullable: true, description: 'Whole tokens left after this check (null without a bucket).' },
    reset_after_ms: { type: 'integer', description: 'Milliseconds until the bucket is full.' },
    retry_after_ms: { type: 'integer', description: 'Milliseconds until the cost can be paid (0 when allowed).' },
    source: { type: 'string', enum: ['redis', 'postgres', 'new-user', 'local', 'redis-fallback', 'local-fallback', 'fail-open', 'allow-list', 'deny-list'], description: 'X-Data-Source; allow-list and deny-list only for a check with a method (the access lists apply).' },
    policy: { type: 'string', nullable: true }
  }
}

const decision = {
  ...bucket,
  properties: {
    ...bucket.properties,
    policies: { type: 'array', items: bucket, description: 'With several policies on the route (all or nothing): every bucket, most restrictive first; the top-level fields are the first one\'s, `allowed` and `retry_after_ms` the request\'s.' },
    violated_policies: { type: 'array', items: { type: 'string' }, description: 'With several policies: the ones that refused (none was charged).' }
  }
}

/** The single check and the batch, as JSON schemas (validation and the OpenAPI document). */
export function checkShapes (maxChecks: number, defaultCost: number): { single: Record<string, unknown>, batch: Record<string, unknown> } {
  const single = {
    type: 'object',
    title: 'One check',
    required: ['key'],
    additionalProperties: false,
    properties: {
      key: { type: 'string', minLength: 1, maxLength: 255, description: 'Caller id (at most 255 bytes, no control characters).', example: 'svc-42' },
      cost: { type: 'integer', minimum: 1, maximum: 1_000_000, description: `Tokens to spend; at most the policy capacity (default: the policy's or the route's cost, ${defaultCost} for the default policy).`, example: 1 },
      policy: { type: 'string', description: 'Policy name (default: the default policy). Ignored when method or path is given.', example: 'default' },
      method: { type: 'string', pattern: '^[A-Za-z-]+$', description: 'With method and/or path, the proxy\'s route rules, tiers and access lists pick the policy and cost, as for a proxied request (method default GET).', example: 'GET' },
      path: { type: 'string', pattern: '^/', description: 'The request path the check stands for (default /), matched against the route rules.', example: '/v1/items' }
    },
    example: { key: 'svc-42', cost: 1 }
  }
  const batch = {
    type: 'object',
    title: 'Several checks',
    required: ['checks'],
    additionalProperties: false,
    properties: { checks: { type: 'array', minItems: 1, maxItems: maxChecks, items: single, description: `1 to ${maxChecks} checks, decided in order.` } },
    example: { checks: [{ key: 'svc-42' }, { key: 'svc-43', cost: 2 }] }
  }
  return { single, batch }
}

const problemResponse = (description: string) => ({ description, $ref: 'problem#' })

export function checkSchemas (maxChecks: number, defaultCost: number): Record<string, unknown> {
  const { single, batch } = checkShapes(maxChecks, defaultCost)
  return {
    summary: 'Spend tokens for one key, or several at once, and say whether each is allowed.',
    tags: ['check'],
    body: { oneOf: [single, batch], example: { key: 'svc-42', cost: 1 } },
    response: {
      200: {
        description: 'The decision (one check) or the decisions in order (several).',
        oneOf: [
          decision,
          { type: 'object', required: ['results'], properties: { results: { type: 'array', items: decision } } }
        ]
      },
      400: problemResponse('The body is not a valid check: the detail names the field (and the index of a bad item in a batch).'),
      415: problemResponse('The body is not JSON: send Content-Type: application/json.'),
      503: problemResponse('PostgreSQL and Redis are both unreachable and FAIL_MODE=closed (Retry-After).')
    }
  }
}
