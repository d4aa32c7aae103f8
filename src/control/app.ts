/**
 * The control listener (127.0.0.1:9090 by default; never reachable through the proxy port):
 * direct checks, bucket admin, health, metrics and the OpenAPI document with Swagger UI.
 */
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Config } from '../config/schema.ts'
import type { Decision } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { StoreUnavailableError, type Limiter } from '../limiter/limiter.ts'
import type { PostgresStore } from '../stores/postgres/postgres-store.ts'
import type { RedisCache } from '../stores/redis/snapshot-cache.ts'
import { parseKey } from '../identity/caller-id.ts'
import { PROBLEM_TYPE, problem } from '../core/problems.ts'
import { requestIdFor } from '../observability/request-id.ts'
import { checkSchemas, problemSchema } from './schemas.ts'
import type { Holder } from '../policy/holder.ts'
import type { LimitPolicy } from '../policy/policy-set.ts'
import type { OverrideStore } from '../stores/postgres/override-store.ts'
import type { Runtime } from '../admission/runtime.ts'
import { registerAdmin } from './admin.ts'

export interface ControlDeps {
  readonly config: Config
  readonly limiter: Limiter
  readonly postgres: PostgresStore
  readonly redis: RedisCache
  readonly metrics: Metrics
  readonly log: Logger
  /** The live configuration: policies by name (hot reload swaps it). */
  readonly runtime: Holder<Runtime>
  readonly overrides: OverrideStore
}

interface CheckInput { key: string, cost?: number, policy?: string }

export class BadRequest extends Error {
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
    requestIdHeader: false,
    genReqId: requestIdFor,
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

  function resolve (input: CheckInput): { policy: LimitPolicy, key: string, cost: number } {
    const key = parseKey(input.key)
    if (!key.ok) throw new BadRequest(key.detail)
    const policy = deps.overrides.table.apply(policyNamed(deps.runtime.current, input.policy), key.id)
    const cost = input.cost ?? policy.cost
    if (cost > policy.capacity) throw new BadRequest(`cost ${cost} exceeds the capacity of policy "${policy.name}" (${policy.capacity}); it could never be allowed.`)
    return { policy, key: key.id, cost }
  }

  async function decide (inputs: CheckInput[], log: Logger): Promise<Decision[]> {
    const resolved = inputs.map(resolve) // all validated before any bucket is touched
    try {
      return await Promise.all(resolved.map((r) => limiter.check(r.policy, r.key, r.cost, log)))
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
      const decisions = await decide(body.checks, request.log as Logger)
      return { results: decisions.map(decisionBody) }
    }
    const [decision] = await decide([body], request.log as Logger)
    return decisionBody(decision!)
  })

  registerAdmin(app, deps)

  app.get('/healthz', { schema: { summary: 'Liveness: the process is serving.', tags: ['health'], response: { 200: { type: 'object', properties: { status: { type: 'string' } } } } } },
    async () => ({ status: 'ok' }))

  app.get('/readyz', {
    schema: {
      summary: 'Readiness: PostgreSQL reachable (control.readiness: postgres, the default), or able to decide without it (deciding). Redis state is reported.',
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
    const deciding = postgres === 'up' ? 'postgres' : deps.limiter.failover.decidesWithoutPostgres(redis === 'up')
    const ready = config.control.readiness === 'postgres' ? postgres === 'up' : deciding !== 'none'
    reply.code(ready ? 200 : 503)
    return { status: ready ? 'ready' : 'not ready', postgres, redis, deciding }
  })

  app.get('/metrics', { schema: { summary: 'Prometheus metrics (text exposition format).', tags: ['metrics'], produces: ['text/plain'] } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    return await metrics.registry.metrics()
  })

  app.addSchema({
    $id: 'readiness',
    type: 'object',
    properties: {
      status: { type: 'string' },
      postgres: { type: 'string', enum: ['up', 'down'] },
      redis: { type: 'string', enum: ['up', 'down', 'disabled'] },
      deciding: { type: 'string', enum: ['postgres', 'redis-fallback', 'local-fallback', 'fail-open', 'none'], description: 'Who decides requests right now.' }
    }
  })
  app.addSchema(problemSchema)
  return app
}

/** The named policy of the live configuration (default when unnamed); 400 when unknown. */
export function policyNamed (runtime: Runtime, name: string | undefined): LimitPolicy {
  const set = runtime.policies
  if (name === undefined) return set.defaultPolicy
  const policy = set.policies.get(name)
  if (policy === undefined) throw new BadRequest(`Unknown policy "${name}"; known: ${[...set.policies.keys()].join(', ')}.`)
  return policy
}
