/**
 * The control listener (127.0.0.1:9090 by default; never reachable through the proxy port):
 * direct checks, bucket admin, health, metrics and the OpenAPI document with Swagger UI.
 */
import { timingSafeEqual } from 'node:crypto'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Config } from '../config/schema.ts'
import type { Decision, Policy } from '../domain.ts'
import type { Logger } from '../log.ts'
import type { Metrics } from '../metrics.ts'
import { makeDecision, StoreUnavailableError, type Limiter } from '../limiter/limiter.ts'
import { tokensAt } from '../bucket/token-bucket.ts'
import type { PostgresStore } from '../stores/postgres.ts'
import type { RedisCache } from '../stores/redis.ts'
import { parseKey } from '../gateway/identity.ts'
import { PROBLEM_TYPE, problem } from '../gateway/problem.ts'
import { checkSchemas, problemSchema } from './schemas.ts'

export interface ControlDeps {
  readonly config: Config
  readonly limiter: Limiter
  readonly postgres: PostgresStore
  readonly redis: RedisCache
  readonly metrics: Metrics
  readonly log: Logger
  readonly policies: ReadonlyMap<string, Policy>
  readonly defaultPolicy: Policy
}

interface CheckInput { key: string, cost?: number, policy?: string }

class BadRequest extends Error {
  readonly statusCode = 400
}

export function decisionBody (d: Decision): Record<string, unknown> {
  return {
    allowed: d.allowed,
    limit: d.policy.capacity,
    remaining: Math.max(0, Math.floor(d.tokens + 1e-9)),
    reset_after_ms: Math.ceil(d.resetAfterMs),
    retry_after_ms: Math.ceil(d.retryAfterMs),
    source: d.source,
    policy: d.policy.name
  }
}

export async function buildControl (deps: ControlDeps): Promise<FastifyInstance> {
  const { config, limiter, metrics } = deps
  const app = Fastify({
    loggerInstance: deps.log.child({ listener: 'control' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: !deps.log.isLevelEnabled('debug'), requestIdLogLabel: 'request_id' }),
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } }
  })

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Rate-limiting gateway: control API', version: '1.0.0', description: 'Direct rate-limit checks, bucket administration, health and metrics. The proxy port forwards everything else to the upstream.' },
      components: { securitySchemes: { admin: { type: 'http', scheme: 'bearer' } } }
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })

  app.setErrorHandler((err: Error & { statusCode?: number, validation?: unknown, retryAfterSeconds?: number }, request, reply) => {
    if (err.statusCode === 503 && err.retryAfterSeconds !== undefined) {
      reply.code(503).header('retry-after', String(err.retryAfterSeconds)).type(PROBLEM_TYPE).send(problem(503, err.message))
      return
    }
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500
    if (status === 500) request.log.error({ err }, 'control request failed')
    reply.code(status).type(PROBLEM_TYPE).send(problem(status, status === 500 ? 'Internal error; see the gateway log.' : err.message))
  })
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).type(PROBLEM_TYPE).send(problem(404, `No route ${request.method} ${request.url} on the control port.`))
  })

  function resolve (input: CheckInput): { policy: Policy, key: string, cost: number } {
    const key = parseKey(input.key)
    if (!key.ok) throw new BadRequest(key.detail)
    const policy = input.policy === undefined ? deps.defaultPolicy : deps.policies.get(input.policy)
    if (policy === undefined) throw new BadRequest(`Unknown policy "${input.policy}"; known: ${[...deps.policies.keys()].join(', ')}.`)
    const cost = input.cost ?? config.limits.cost
    if (cost > policy.capacity) throw new BadRequest(`cost ${cost} exceeds the capacity of policy "${policy.name}" (${policy.capacity}); it could never be allowed.`)
    return { policy, key: key.id, cost }
  }

  async function decide (inputs: CheckInput[]): Promise<Decision[]> {
    const resolved = inputs.map(resolve) // all validated before any bucket is touched
    try {
      return await Promise.all(resolved.map((r) => limiter.check(r.policy, r.key, r.cost)))
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw Object.assign(new Error('The rate limiter cannot reach its stores; retry shortly.'), { statusCode: 503, retryAfterSeconds: err.retryAfterSeconds })
      throw err
    }
  }

  app.post<{ Body: CheckInput | { checks: CheckInput[] } }>('/v1/check', {
    schema: checkSchemas(config.control.maxChecksPerRequest, config.limits.cost)
  }, async (request) => {
    const body = request.body
    if ('checks' in body) {
      const decisions = await decide(body.checks)
      return { results: decisions.map(decisionBody) }
    }
    const [decision] = await decide([body])
    return decisionBody(decision!)
  })

  registerAdmin(app, deps)

  app.get('/healthz', { schema: { summary: 'Liveness: the process is serving.', tags: ['health'], response: { 200: { type: 'object', properties: { status: { type: 'string' } } } } } },
    async () => ({ status: 'ok' }))

  app.get('/readyz', {
    schema: {
      summary: 'Readiness: PostgreSQL reachable. Redis state is reported but not required.',
      tags: ['health'],
      response: {
        200: { $ref: 'readiness#' },
        503: { $ref: 'readiness#' }
      }
    }
  }, async (_request, reply) => {
    let postgres = 'up'
    try {
      await deps.postgres.ping()
    } catch {
      postgres = 'down'
    }
    const redis = deps.redis.client === null ? 'disabled' : (await deps.redis.ping()) ? 'up' : 'down'
    const ready = postgres === 'up'
    reply.code(ready ? 200 : 503)
    return { status: ready ? 'ready' : 'not ready', postgres, redis }
  })

  app.get('/metrics', { schema: { summary: 'Prometheus metrics (text exposition format).', tags: ['metrics'], produces: ['text/plain'] } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    return await metrics.registry.metrics()
  })

  app.addSchema({
    $id: 'readiness',
    type: 'object',
    properties: { status: { type: 'string' }, postgres: { type: 'string', enum: ['up', 'down'] }, redis: { type: 'string', enum: ['up', 'down', 'disabled'] } }
  })
  app.addSchema(problemSchema)
  return app
}

/** Admin routes: peek and reset a bucket. Disabled unless an admin token is configured. */
function registerAdmin (app: FastifyInstance, deps: ControlDeps): void {
  const token = deps.config.control.adminToken
  const expected = token === undefined ? null : Buffer.from(`Bearer ${token}`)

  function authorize (request: FastifyRequest, reply: FastifyReply): boolean {
    if (expected === null) {
      reply.code(404).type(PROBLEM_TYPE).send(problem(404, 'The admin API is disabled: set ADMIN_TOKEN to enable it.'))
      return false
    }
    const given = Buffer.from(request.headers.authorization ?? '')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      reply.code(401).header('www-authenticate', 'Bearer').type(PROBLEM_TYPE).send(problem(401, 'A valid "Authorization: Bearer <ADMIN_TOKEN>" header is required.'))
      return false
    }
    return true
  }

  function target (params: { key: string }, query: { policy?: string }): { policy: Policy, key: string } {
    const key = parseKey(params.key)
    if (!key.ok) throw new BadRequest(key.detail)
    const policy = query.policy === undefined ? deps.defaultPolicy : deps.policies.get(query.policy)
    if (policy === undefined) throw new BadRequest(`Unknown policy "${query.policy}".`)
    return { policy, key: key.id }
  }

  const common = {
    tags: ['admin'],
    security: [{ admin: [] }],
    params: { type: 'object', required: ['key'], properties: { key: { type: 'string', description: 'The caller id.' } } },
    querystring: { type: 'object', additionalProperties: false, properties: { policy: { type: 'string', description: 'Policy name (default: the default policy).' } } }
  }

  app.get<{ Params: { key: string }, Querystring: { policy?: string } }>('/v1/buckets/:key', {
    schema: { ...common, summary: 'Peek at a bucket without spending a token.' }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { policy, key } = target(request.params, request.query)
    const { snapshot, nowMs } = await deps.postgres.peek(policy.name, key)
    const tokens = snapshot === null ? policy.capacity : tokensAt(snapshot, policy, nowMs)
    return { key, exists: snapshot !== null, tokens, ...decisionBody(makeDecision(policy, 0, true, tokens, 'postgres')) }
  })

  app.delete<{ Params: { key: string }, Querystring: { policy?: string } }>('/v1/buckets/:key', {
    schema: { ...common, summary: 'Reset a bucket to full; takes effect on the very next request.' }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { policy, key } = target(request.params, request.query)
    // The cached snapshot goes first and again after: a stale one would keep denying.
    await deps.redis.remove(deps.redis.key(policy.name, key)).catch(() => {})
    const existed = await deps.postgres.reset(policy.name, key)
    await deps.redis.remove(deps.redis.key(policy.name, key)).catch(() => {})
    request.log.info({ admin_action: 'reset', key, policy: policy.name, existed }, 'bucket reset')
    return { key, policy: policy.name, reset: true, existed }
  })
}
