/**
 * The proxy listener: identify the caller, decide, then forward to the upstream or answer 429.
 * The limiter runs in `onRequest`, before any body handling, so a refused request costs no
 * body parsing and is never forwarded. Bodies stream through untouched.
 */
import { randomUUID } from 'node:crypto'
import httpProxy, { type FastifyHttpProxyOptions } from '@fastify/http-proxy'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Config } from '../config/schema.ts'
import type { Decision, Policy } from '../domain.ts'
import type { Logger } from '../log.ts'
import type { Metrics } from '../metrics.ts'
import { StoreUnavailableError, type Limiter } from '../limiter/limiter.ts'
import { LIMIT_HEADERS, rateLimitHeaders, windowSeconds } from './headers.ts'
import { parseCallerId } from './identity.ts'
import { UpstreamDispatcher } from './upstream-dispatcher.ts'
import { PROBLEM_TYPE, QUOTA_EXCEEDED, problem } from './problem.ts'

declare module 'fastify' {
  interface FastifyRequest {
    decision: Decision | null
    upstreamStartedAt: bigint
  }
}

export interface ProxyDeps {
  readonly config: Config
  readonly upstreamUrl: string
  readonly limiter: Limiter
  readonly metrics: Metrics
  readonly log: Logger
  /** The policy that applies to a request. */
  readonly policyFor: (request: FastifyRequest) => { policy: Policy, cost: number }
}

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const

export async function buildProxy (deps: ProxyDeps): Promise<FastifyInstance> {
  const { config, limiter, metrics } = deps
  const header = config.identity.header
  const app = Fastify({
    loggerInstance: deps.log.child({ listener: 'proxy' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: !deps.log.isLevelEnabled('debug'), requestIdLogLabel: 'request_id' }),
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    // A request that reached us is served even while closing (graceful shutdown).
    return503OnClosing: false,
    http: { maxHeaderSize: config.proxy.maxHeaderBytes }
  })
  app.decorateRequest('decision', null)
  app.decorateRequest('upstreamStartedAt', 0n)

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500
    if (status === 500) request.log.error({ err }, 'request failed')
    sendProblem(reply, status, status === 500 ? 'The gateway failed to handle this request.' : err.message, request.decision)
  })

  app.addHook('onRequest', async (request, reply) => {
    const identity = parseCallerId(request.headers[header], header)
    if (!identity.ok) {
      metrics.rejectedRequests.inc({ reason: identity.reason })
      sendProblem(reply, 400, identity.detail, null)
      return reply
    }
    const { policy, cost } = deps.policyFor(request)
    let decision: Decision
    try {
      decision = await limiter.check(policy, identity.id, cost)
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err
      reply.header('retry-after', String(err.retryAfterSeconds))
      sendProblem(reply, 503, 'The rate limiter cannot reach its stores (FAIL_MODE=closed); retry shortly.', null)
      return reply
    }
    request.decision = decision
    if (!decision.allowed) {
      reply.headers(rateLimitHeaders(decision))
      reply.code(429).type(PROBLEM_TYPE).send({
        type: QUOTA_EXCEEDED,
        title: 'Too Many Requests',
        status: 429,
        detail: `Rate limit exceeded for policy "${policy.name}" (${policy.capacity} requests per ${windowSeconds(policy)} s); retry in ${reply.getHeader('retry-after') as string} s.`,
        'violated-policies': [policy.name]
      })
      return reply
    }
    request.upstreamStartedAt = process.hrtime.bigint()
  })

  app.addHook('onResponse', async (request, reply) => {
    if (request.decision?.allowed === true) {
      upstream.forget(request.id)
      metrics.proxiedResponses.inc({ status_class: STATUS_CLASSES[Math.floor(reply.statusCode / 100) - 1] ?? '5xx' })
    }
  })

  const tlsVerify = config.proxy.upstreamTlsVerify
  // Our own pool, so that a client that disconnects aborts its upstream request too.
  const upstream = new UpstreamDispatcher({
    connections: config.proxy.upstreamConnections,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    // reply-from's default disables certificate checks; a gateway must verify them.
    connect: { rejectUnauthorized: tlsVerify }
  })
  app.addHook('onClose', async () => { await upstream.close() })
  const proxyOptions: FastifyHttpProxyOptions = {
    upstream: deps.upstreamUrl,
    // reply-from logs two info lines per request on its own; per-request logs are debug-only.
    disableRequestLogging: !deps.log.isLevelEnabled('debug'),
    undici: upstream as object,
    replyOptions: {
      timeout: config.proxy.upstreamTimeoutMs,
      // reply-from retries GETs answered 503 up to 10 times: a gateway must not multiply
      // load on a struggling upstream, so nothing is retried.
      retryDelay: () => null,
      rewriteRequestHeaders: (request, headers) => {
        const out: Record<string, string | string[] | undefined> = { ...headers, 'x-request-id': request.id }
        for (const name of LIMIT_HEADERS) delete out[name]
        upstream.watch(request.id, request.raw.socket)
        return out
      },
      rewriteHeaders: (headers, request) => {
        if (request === undefined) return headers
        metrics.upstreamDuration.observe(Number(process.hrtime.bigint() - request.upstreamStartedAt) / 1e9)
        for (const name of LIMIT_HEADERS) delete headers[name]
        return request.decision === null ? headers : { ...headers, ...rateLimitHeaders(request.decision) }
      },
      onError: (reply, { error }: { error: Error & { statusCode?: number, code?: string } }) => {
        if (reply.request.raw.socket.destroyed) {
          // The client left (and the upstream request was aborted with it): nobody to answer.
          reply.log.debug({ err: error }, 'client disconnected; upstream request aborted')
          return
        }
        const timeout = error.statusCode === 504 || /TIMEOUT/.test(String(error.code))
        metrics.upstreamErrors.inc({ kind: timeout ? 'timeout' : 'unreachable' })
        reply.log.warn({ err: error }, timeout ? 'upstream timed out' : 'upstream unreachable')
        sendProblem(reply, timeout ? 504 : 502,
          timeout ? `The upstream did not answer within ${config.proxy.upstreamTimeoutMs} ms.` : 'The upstream could not be reached or failed mid-response.',
          reply.request.decision)
      }
    }
  }
  await app.register(httpProxy, proxyOptions)
  return app
}

function sendProblem (reply: FastifyReply<any, any, any, any>, status: number, detail: string, decision: Decision | null): void {
  if (decision !== null) reply.headers(rateLimitHeaders(decision))
  reply.code(status).type(PROBLEM_TYPE).send(problem(status, detail))
}
