/**
 * The control listener (127.0.0.1:9090 by default; never reachable through the proxy port):
 * direct checks, bucket admin, health, metrics and the OpenAPI document with Swagger UI.
 */
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { BadRequest } from '../core/errors.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { Limiter } from '../limiter/limiter.ts'
import { parseKey } from '../identity/caller-id.ts'
import { clientProblem, PROBLEM_TYPE, problem, storesUnavailable } from '../core/problems.ts'
import { requestIdFor } from '../observability/request-id.ts'
import { checkSchemas, checkShapes, problemSchema } from './schemas.ts'
import { checkBodyValidator } from './check-validation.ts'
import { describeResponses } from './openapi.ts'
import { packageVersion } from '../core/package.ts'
import { decide, screen, type Admission, type Screened } from '../admission/admit.ts'
import { registerAdmin } from './admin.ts'
import type { ControlDeps } from './deps.ts'
import { admissionBody } from './decision-body.ts'
import { localReadiness } from './readiness.ts'


interface CheckInput { key: string, cost?: number, policy?: string, method?: string, path?: string }

/** Answered as a whole when one check of a request cannot be served (FAIL_MODE=closed). */
class Unavailable extends Error {
  readonly retryAfterSeconds: number
  constructor (retryAfterSeconds: number) {
    super('stores unavailable')
    this.retryAfterSeconds = retryAfterSeconds
  }
}

export async function buildControl (deps: ControlDeps): Promise<FastifyInstance> {
  const { config, limiter, metrics } = deps
  const app = Fastify({
    loggerInstance: deps.log.child({ listener: 'control' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: !deps.log.isLevelEnabled('debug'), requestIdLogLabel: 'request_id' }),
    requestIdHeader: false,
    genReqId: requestIdFor,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false, keywords: ['example'] } }
  })

  // Every route's pattern and methods, so that a known path asked with another method gets 405.
  const known: Array<{ pattern: RegExp, methods: Set<string> }> = []
  app.addHook('onRoute', (route) => {
    const pattern = new RegExp('^' + route.url.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/:[^/]+/g, '[^/]+') + '/?$')
    let entry = known.find((k) => k.pattern.source === pattern.source)
    if (entry === undefined) known.push(entry = { pattern, methods: new Set() })
    for (const m of Array.isArray(route.method) ? route.method : [route.method]) entry.methods.add(m)
  })

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Rate-limiting gateway: control API', version: packageVersion(), description: 'Direct rate-limit checks, bucket administration, health and metrics. The proxy port forwards everything else to the upstream.' },
      components: { securitySchemes: { admin: { type: 'http', scheme: 'bearer' } } }
    },
    transform: describeResponses
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    if (err instanceof Unavailable) {
      const closed = storesUnavailable(err.retryAfterSeconds)
      reply.code(503).headers(closed.headers).type(PROBLEM_TYPE).send(closed.body)
      return
    }
    const client = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500
    if (!client) request.log.error({ err }, 'control request failed')
    const message = err.statusCode === 415 ? `${err.message}. Send the body as JSON with "Content-Type: application/json".` : err.message
    reply.code(client ? err.statusCode! : 500).type(PROBLEM_TYPE).send(client ? clientProblem(err.statusCode!, message) : problem('CONTROL_INTERNAL'))
  })
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!
    const allowed = [...new Set(known.filter((k) => k.pattern.test(path)).flatMap((k) => [...k.methods]))]
    if (allowed.length > 0) {
      reply.code(405).header('allow', allowed.join(', ')).type(PROBLEM_TYPE).send(problem('CONTROL_METHOD_NOT_ALLOWED', request.method, path, allowed))
      return
    }
    reply.code(404).type(PROBLEM_TYPE).send(problem('NO_CONTROL_ROUTE', request.method, request.url))
  })

  /** A check as admission sees it: with method and path, the proxy's routes, tiers and lists apply. */
  function screened (input: CheckInput): Screened {
    const key = parseKey(input.key)
    if (!key.ok) throw new BadRequest(key.detail)
    const routed = input.method !== undefined || input.path !== undefined
    const s = screen(deps.runtime.current, deps.overrides.table, routed
      ? { id: key.id, method: (input.method ?? 'GET').toUpperCase(), path: input.path ?? '/', ...(input.cost === undefined ? {} : { cost: input.cost }) }
      : { id: key.id, ...(input.policy === undefined ? {} : { policyName: input.policy }), ...(input.cost === undefined ? {} : { cost: input.cost }) })
    if (s.kind === 'charge') {
      s.policies.forEach((p, i) => {
        const cost = s.costs[i]!
        if (cost > p.capacity) throw new BadRequest(`cost ${cost} exceeds the capacity of policy "${p.name}" (${p.capacity}); it could never be allowed.`)
      })
    }
    return s
  }

  async function check (inputs: CheckInput[], log: Logger): Promise<Admission[]> {
    const all = inputs.map(screened) // all validated before any bucket is touched
    const admitted = await Promise.all(all.map(async (s) => await decide(admission, s, log)))
    for (const a of admitted) if (a.kind === 'unavailable') throw new Unavailable(a.retryAfterSeconds)
    return admitted
  }
  const admission = { limiter, metrics, overrides: deps.overrides }

  const shapes = checkShapes(config.control.maxChecksPerRequest, config.limits.cost)
  const validateCheck = checkBodyValidator(shapes.single, shapes.batch)
  app.post<{ Body: CheckInput | { checks: CheckInput[] } }>('/v1/check', {
    schema: checkSchemas(config.control.maxChecksPerRequest, config.limits.cost),
    // By the shape sent, not both at once (check-validation.ts); the schema documents it.
    validatorCompiler: () => validateCheck
  }, async (request) => {
    const body = request.body
    if ('checks' in body) {
      const admitted = await check(body.checks, request.log as Logger)
      return { results: admitted.map(admissionBody) }
    }
    const [admitted] = await check([body], request.log as Logger)
    return admissionBody(admitted!)
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
    const own = await localReadiness(deps)
    if (deps.cluster === undefined) {
      reply.code(own.ready ? 200 : 503)
      return { status: own.ready ? 'ready' : 'not ready', postgres: own.postgres, redis: own.redis, deciding: own.deciding }
    }
    // A load balancer sends to the host, and the host's primary hands the connection to any
    // worker: the host is ready only when every configured worker is up and ready.
    const all = await deps.cluster.readiness()
    const ready = all.workers.length >= all.expected && all.workers.every((w) => w.ready)
    reply.code(ready ? 200 : 503)
    return { status: ready ? 'ready' : 'not ready', postgres: own.postgres, redis: own.redis, deciding: own.deciding, workers: all.workers, expected_workers: all.expected }
  })

  app.get('/metrics', { schema: { summary: 'Prometheus metrics (text exposition format).', tags: ['metrics'], produces: ['text/plain'] } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    // With several workers, every worker's series summed by the primary (docs/observability.md).
    return deps.cluster === undefined ? await metrics.registry.metrics() : await deps.cluster.metrics()
  })

  app.addSchema({
    $id: 'readiness',
    type: 'object',
    properties: {
      status: { type: 'string' },
      postgres: { type: 'string', enum: ['up', 'down'] },
      redis: { type: 'string', enum: ['up', 'down', 'disabled'] },
      deciding: { type: 'string', enum: ['postgres', 'redis-fallback', 'local-fallback', 'fail-open', 'none'], description: 'Who decides requests right now (in the worker that answered).' },
      expected_workers: { type: 'integer', description: 'With proxy.workers > 1: the workers configured.' },
      workers: {
        type: 'array',
        description: 'With proxy.workers > 1: each worker that answered, with its own readiness. Ready only when all expected workers are.',
        items: {
          type: 'object',
          properties: {
            worker: { type: 'integer' },
            pid: { type: 'integer' },
            ready: { type: 'boolean' },
            postgres: { type: 'string' },
            redis: { type: 'string' },
            deciding: { type: 'string' }
          }
        }
      }
    }
  })
  app.addSchema(problemSchema)
  return app
}
