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

const decision = {
  type: 'object',
  required: ['allowed', 'limit', 'remaining', 'reset_after_ms', 'retry_after_ms', 'source', 'policy'],
  properties: {
    allowed: { type: 'boolean' },
    limit: { type: 'number', description: 'Bucket capacity.' },
    remaining: { type: 'integer', description: 'Whole tokens left after this check.' },
    reset_after_ms: { type: 'integer', description: 'Milliseconds until the bucket is full.' },
    retry_after_ms: { type: 'integer', description: 'Milliseconds until the cost can be paid (0 when allowed).' },
    source: { type: 'string', enum: ['redis', 'postgres', 'new-user', 'local', 'redis-fallback', 'local-fallback', 'fail-open'] },
    policy: { type: 'string' }
  }
}

export function checkSchemas (maxChecks: number, defaultCost: number): Record<string, unknown> {
  const check = {
    type: 'object',
    required: ['key'],
    additionalProperties: false,
    properties: {
      key: { type: 'string', minLength: 1, maxLength: 255, description: 'Caller id (at most 255 bytes, no control characters).' },
      cost: { type: 'integer', minimum: 1, maximum: 1_000_000, description: `Tokens to spend; at most the policy capacity (default ${defaultCost}).` },
      policy: { type: 'string', description: 'Policy name (default: the default policy).' }
    }
  }
  return {
    summary: 'Spend tokens for one key, or several at once, and say whether each is allowed.',
    tags: ['check'],
    body: {
      oneOf: [
        check,
        {
          type: 'object',
          required: ['checks'],
          additionalProperties: false,
          properties: { checks: { type: 'array', minItems: 1, maxItems: maxChecks, items: check } }
        }
      ]
    },
    response: {
      200: {
        oneOf: [
          decision,
          { type: 'object', required: ['results'], properties: { results: { type: 'array', items: decision } } }
        ]
      },
      400: { $ref: 'problem#' },
      503: { $ref: 'problem#' }
    }
  }
}
