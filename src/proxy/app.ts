/**
 * The proxy listener: identify the caller, decide, then forward to the upstream or answer 429.
 * The limiter runs in `onRequest`, before any body handling, so a refused request costs no
 * body parsing and is never forwarded. Bodies stream through untouched.
 */
import httpProxy, { type FastifyHttpProxyOptions } from '@fastify/http-proxy'
import { readFileSync } from 'node:fs'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { IncomingMessage } from 'node:http'
import { Agent } from 'undici'
import type { Config } from '../config/schema.ts'
import type { Verdict } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import { STATUS_CLASSES, type Metrics } from '../observability/metrics.ts'
import type { Limiter } from '../limiter/limiter.ts'
import type { ConcurrencyLimiter } from '../limiter/concurrency.ts'
import { admit } from '../admission/admit.ts'
import { dropHopByHop, LIMIT_HEADERS, NOT_FORWARDED, PartitionKeys, rateLimitHeaders, windowSeconds, writeRateLimitHeaders } from './headers.ts'
import { REQUEST_ID_HEADER, requestIdFor } from '../observability/request-id.ts'
import { addForwardedHeadersFor } from './forwarded.ts'
import { handshakeHeaders, onlyWebSocketUpgrades, WEBSOCKET_UPGRADE } from './websocket.ts'
import { clientErrorHandler } from './client-error.ts'
import { forwarder, isForwardable } from './forward.ts'
import { clientProblem, PROBLEM_TYPE, problem, storesUnavailable, type Problem } from '../core/problems.ts'
import type { Holder } from '../policy/holder.ts'
import type { OverrideTable } from '../policy/overrides.ts'
import { pathOf } from '../policy/path.ts'
import { FASTIFY_METHODS, PROXIED_METHODS } from '../core/methods.ts'
import { upstreamUrl } from '../policy/policy-set.ts'
import { duplicateDetail, isRepeated } from '../identity/duplicates.ts'
import { canonicalAddress, clientAddress, isTrusted } from '../identity/client-address.ts'
import { isPreflight, PreflightLimiter } from './preflight.ts'
import { accessLogger } from './access-log.ts'
import type { Runtime } from '../admission/runtime.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** Every bucket the request was charged against (null: not limited). */
    decision: Verdict | null
    upstreamStartedAt: bigint
    /** Set for shadow-mode policies: what enforcement would have done. */
    shadow: 'allowed' | 'would-block' | 'unavailable' | null
    /** Origin of the upstream this request goes to (several upstreams by path prefix). */
    upstreamOrigin: string
    /** Milliseconds until the upstream's response head (-1: no upstream response). */
    upstreamMs: number
    /** The upstream could not be reached or timed out (answered 502/504 by the gateway). */
    upstreamFailed: boolean
    /** Access log only (log.access): the caller id and the path as the client sent them. */
    accessCaller: string | null
    accessPath: string | null
    /** Access log only: the connection's bytesWritten when this request began. */
    accessBytesAt: number
  }
}

export interface ProxyDeps {
  readonly config: Config
  readonly limiter: Limiter
  /** Concurrency slots (policy concurrency: N); absent: not enforced. */
  readonly concurrency?: ConcurrencyLimiter
  readonly metrics: Metrics
  readonly log: Logger
  /** The access log's logger (log.access): `log`, or one with a buffered destination of its own. */
  readonly accessLog: Logger
  /** The live configuration (policies, identity, upstreams); hot reload swaps it. */
  readonly runtime: Holder<Runtime>
  /** Per-caller overrides (admin API), kept fresh by the override store. */
  readonly overrides: { readonly table: OverrideTable }
}

export async function buildProxy (deps: ProxyDeps): Promise<FastifyInstance> {
  const { config, limiter, metrics } = deps
  const app = Fastify({
    loggerInstance: deps.log.child({ listener: 'proxy' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: !deps.log.isLevelEnabled('debug'), requestIdLogLabel: 'request_id' }),
    // requestIdFor reads x-request-id itself, keeping only well-formed ids.
    requestIdHeader: false,
    genReqId: requestIdFor,
    // A request that reached us is served even while closing (graceful shutdown).
    return503OnClosing: false,
    clientErrorHandler: clientErrorHandler(metrics, config.proxy.maxHeaderBytes),
    // WebSocket upgrades take @fastify/http-proxy's route; everything else takes the forwarder's.
    ...(config.proxy.websocket ? { routerOptions: { constraints: { upgrade: WEBSOCKET_UPGRADE } } } : {}),
    ...serverOptions(config.proxy)
  }) as unknown as FastifyInstance
  // Every method Node parses goes upstream (WebDAV and extension methods included).
  for (const method of PROXIED_METHODS) if (!FASTIFY_METHODS.has(method)) app.addHttpMethod(method, { hasBody: true })
  app.decorateRequest('decision', null)
  app.decorateRequest('upstreamStartedAt', 0n)
  app.decorateRequest('shadow', null)
  app.decorateRequest('upstreamOrigin', '')
  app.decorateRequest('upstreamMs', -1)
  app.decorateRequest('upstreamFailed', false)
  app.decorateRequest('accessCaller', null)
  app.decorateRequest('accessPath', null)
  app.decorateRequest('accessBytesAt', 0)

  const pk = config.proxy.partitionKeySecret === undefined ? null : new PartitionKeys(config.proxy.partitionKeySecret)
  const send = (reply: FastifyReply<any, any, any, any>, body: Problem, verdict: Verdict | null): void => sendProblem(reply, body, verdict, pk)

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const client = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500
    if (!client) request.log.error({ err }, 'request failed')
    send(reply, client ? clientProblem(err.statusCode!, err.message) : problem('PROXY_INTERNAL'), request.decision)
  })

  const admission = { limiter: deps.limiter, metrics, overrides: deps.overrides, ...(deps.concurrency === undefined ? {} : { concurrency: deps.concurrency }) }
  const access = config.log.access ? accessLogger(deps.accessLog.child({ log: 'access' }), config.log.accessCaller) : null
  const allowTrace = config.proxy.allowTrace
  const preflight = config.proxy.preflight
  const preflights = new PreflightLimiter(config.proxy.preflightLimit)
  const ALLOW = PROXIED_METHODS.filter((m) => m !== 'TRACE').join(', ')
  app.addHook('onRequest', async (request, reply) => {
    // Echoed so a caller can quote it; upstream gets it too (the forwarder's requestHeaders).
    reply.header(REQUEST_ID_HEADER, request.id)
    if (access !== null) {
      request.accessPath = pathOf(request.url)
      request.accessBytesAt = request.raw.socket.bytesWritten
    }
    if (request.method === 'TRACE' && !allowTrace) {
      reply.header('allow', ALLOW)
      send(reply, problem('METHOD_NOT_ALLOWED', 'TRACE'), null)
      return reply
    }
    // One read of the live configuration: this request sees all of one version.
    const runtime = deps.runtime.current
    const set = runtime.policies
    const peer = request.socket.remoteAddress
    if (preflight !== 'limit' && isPreflight(request.method, request.headers)) {
      if (preflight === 'refuse') {
        send(reply, problem('PREFLIGHT_REFUSED'), null)
        return reply
      }
      const address = clientAddress(peer, request.headers['x-forwarded-for'], runtime.trustedProxies)
      const wait = preflights.take(address.ok ? address.address : String(peer))
      if (wait > 0) {
        metrics.rejectedRequests.inc({ reason: 'preflight-limit' })
        reply.header('retry-after', String(wait))
        send(reply, problem('PREFLIGHT_LIMITED', wait), null)
        return reply
      }
      toUpstream(request, set)
      return
    }
    const identifying = runtime.identify(request.headers, peer, request.raw.rawHeaders)
    // Only JWT identity is asynchronous: the others should not pay a turn of the microtask queue.
    const identity = identifying instanceof Promise ? await identifying : identifying
    if (!identity.ok) {
      metrics.rejectedRequests.inc({ reason: identity.reason })
      if (identity.status === 401) reply.header('www-authenticate', identity.reason === 'invalid-token' ? 'Bearer error="invalid_token"' : 'Bearer')
      send(reply, problem(identity.status === 401 ? 'TOKEN_INVALID' : identity.reason === 'duplicate-header' ? 'DUPLICATE_HEADER' : 'CALLER_ID_INVALID', identity.detail), null)
      return reply
    }
    let tierHeader: string | string[] | undefined
    if (set.tierHeader !== undefined) {
      tierHeader = request.headers[set.tierHeader]
      if (isRepeated(tierHeader, request.raw.rawHeaders, set.tierHeader)) {
        metrics.rejectedRequests.inc({ reason: 'duplicate-header' })
        send(reply, problem('DUPLICATE_HEADER', duplicateDetail(set.tierHeader)), null)
        return reply
      }
      // Believed only from a trusted proxy unless tiers.trustHeaderFrom says any client.
      if (tierHeader !== undefined && !set.trustsTierHeaderFromAnyone &&
        (runtime.trustedProxies === null || peer === undefined || !isTrusted(runtime.trustedProxies, canonicalAddress(peer)))) tierHeader = undefined
    }
    if (access !== null) request.accessCaller = identity.id
    const rawPath = pathOf(request.url)
    const admitted = await admit(admission, runtime, {
      id: identity.id,
      method: request.method,
      path: rawPath,
      tierHeader,
      claims: identity.claims
    }, request.log as Logger)
    switch (admitted.kind) {
      case 'deny-listed':
        send(reply, problem('CALLER_DENIED'), null)
        return reply
      case 'unavailable': {
        // Both stores down and FAIL_MODE=closed (docs/reliability.md).
        const closed = storesUnavailable(admitted.retryAfterSeconds)
        reply.headers(closed.headers)
        send(reply, closed.body, null)
        return reply
      }
      case 'limited': {
        const v = admitted.verdict
        request.decision = v
        const headers = rateLimitHeaders(v, pk)
        reply.headers(headers)
        const violated = v.violated.map((d) => ({ name: d.policy.name, capacity: d.policy.capacity, windowSeconds: windowSeconds(d.policy) }))
        reply.code(429).type(PROBLEM_TYPE).send(problem('QUOTA_EXCEEDED', violated, Number(headers['retry-after'])))
        return reply
      }
      case 'forward':
        // Concurrency slots are held until the response ends or the client leaves.
        if (admitted.slots != null) { const slots = admitted.slots; reply.raw.once('close', () => { slots.release() }) }
        if (admitted.shadow !== null) request.shadow = admitted.shadow
        else request.decision = admitted.verdict
    }
    toUpstream(request, set)
  })

  // Graceful shutdown: Node closes the connections that are idle when the server closes, but a
  // keep-alive connection whose response was still in flight would then stay open for the
  // client to reuse (up to the keep-alive timeout), holding the shutdown. Once closing, each
  // finished response closes the connections that have become idle.
  let closing = false
  app.addHook('preClose', (done) => { closing = true; done() })

  // Callback style: an async hook costs a promise per request for nothing to wait on.
  app.addHook('onResponse', (request, reply, done) => {
    if (request.upstreamStartedAt !== 0n) {
      metrics.bound.proxied[STATUS_CLASSES[Math.floor(reply.statusCode / 100) - 1] ?? '5xx'].inc()
      // Policy refunds (docs/policies.md): off the response path, by the store that charged.
      const verdict = request.decision
      if (verdict !== null && verdict.allowed) {
        if (request.upstreamFailed) void limiter.refund(verdict, 'upstream-error')
        else if (reply.statusCode >= 500 && request.upstreamMs >= 0) void limiter.refund(verdict, '5xx')
      }
    }
    if (access !== null) access(request, reply)
    if (closing) setImmediate(() => app.server.closeIdleConnections())
    done()
  })

  const tlsVerify = config.proxy.upstreamTlsVerify
  const forwardedHeaders = config.proxy.forwardedHeaders
  const upstream = new Agent({
    connections: config.proxy.upstreamConnections,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    connect: { rejectUnauthorized: tlsVerify }
  })
  app.addHook('onClose', async () => { await upstream.close() })
  const forward = forwarder({
    dispatcher: upstream,
    timeoutMs: config.proxy.upstreamTimeoutMs,
    // The client's own request id, if any, was read by requestIdFor: ours replaces it.
    dropped: [...NOT_FORWARDED, REQUEST_ID_HEADER],
    requestHeaders: (request, headers) => {
      headers[REQUEST_ID_HEADER] = request.id
      if (forwardedHeaders) addForwardedHeadersFor(headers, request, deps.runtime.current.trustedProxies)
    },
    responseHeaders: (headers, request) => {
      const seconds = Number(process.hrtime.bigint() - request.upstreamStartedAt) / 1e9
      metrics.bound.upstreamDuration.observe(seconds)
      request.upstreamMs = seconds * 1000
      dropHopByHop(headers)
      for (const name of LIMIT_HEADERS) if (headers[name] !== undefined) delete headers[name]
      if (request.shadow !== null) headers['x-ratelimit-shadow'] = request.shadow
      if (request.decision !== null) writeRateLimitHeaders(headers as Record<string, unknown>, request.decision, pk)
    },
    failed: (reply, error) => {
      const code = String(error.code)
      const timeout = /TIMEOUT/.test(code)
      reply.request.upstreamFailed = true
      metrics.bound.upstreamErrors[timeout ? 'timeout' : 'unreachable'].inc()
      const cause = (error.cause ?? error) as Error & { code?: string }
      reply.log.warn({ upstream: reply.request.upstreamOrigin, cause: cause.message, code: cause.code ?? error.code, status: timeout ? 504 : 502 }, timeout ? 'upstream timed out' : 'upstream unreachable')
      if (reply.request.shadow !== null) reply.header('x-ratelimit-shadow', reply.request.shadow)
      send(reply, timeout ? problem('UPSTREAM_TIMEOUT', config.proxy.upstreamTimeoutMs) : problem('UPSTREAM_UNREACHABLE'), reply.request.decision)
    },
    // A body that fails after its head was sent (the upstream reset it, or paused longer than
    // the upstream timeout): the client's connection is aborted, and an operator must see why.
    interrupted: (reply, error) => {
      metrics.bound.upstreamErrors.interrupted.inc()
      reply.log.warn({ err: error }, 'upstream response interrupted after its head was sent; client connection aborted')
    }
  })
  // Bodies stream through unread: the forwarder hands the request stream to undici.
  const unread = (_request: FastifyRequest, payload: IncomingMessage, done: (err: null, body?: unknown) => void): void => { done(null, payload) }
  app.addContentTypeParser('application/json', unread)
  app.addContentTypeParser('text/plain', unread)
  app.addContentTypeParser('*', unread)
  const hosts = new Map<string, string>()
  const hostOf = (origin: string): string => {
    let host = hosts.get(origin)
    if (host === undefined) { host = new URL(origin).host; hosts.set(origin, host) }
    return host
  }
  const handler = (request: FastifyRequest, reply: FastifyReply): FastifyReply | undefined => {
    const path = request.raw.url!
    if (!isForwardable(path)) {
      send(reply, clientProblem(400, 'The request target is not a path the gateway forwards (a dot-dot segment, or not a path).'), request.decision)
      return reply
    }
    const origin = request.upstreamOrigin
    forward(request, reply, { origin, host: hostOf(origin), path })
    return undefined
  }
  for (const url of ['/', '/*']) app.route({ method: [...PROXIED_METHODS], url, handler })

  if (config.proxy.websocket) {
    const handshake = { forwardedHeaders, trustedProxies: () => deps.runtime.current.trustedProxies }
    const wsOptions: FastifyHttpProxyOptions = {
      upstream: '',
      httpMethods: ['GET'],
      // The root's pass-through parsers already apply (an upgrade has no body anyway).
      proxyPayloads: false,
      constraints: { upgrade: 'websocket' },
      websocket: true,
      disableRequestLogging: !deps.log.isLevelEnabled('debug'),
      replyOptions: { getUpstream: (request) => (request as FastifyRequest).upstreamOrigin },
      wsClientOptions: { rewriteRequestHeaders: (_defaults: unknown, request: FastifyRequest) => handshakeHeaders(request, handshake) }
    } as FastifyHttpProxyOptions
    await app.register(httpProxy, wsOptions)
  }
  if (config.proxy.websocket) onlyWebSocketUpgrades(app.server)
  return app
}

/** Picks the upstream by path prefix and rewrites the target for it. */
function toUpstream (request: FastifyRequest, set: Runtime['policies']): void {
  const url = request.url
  const target = set.upstreamFor(pathOf(url))
  request.upstreamOrigin = target.origin
  const rewritten = upstreamUrl(target, url)
  if (rewritten !== null) request.raw.url = rewritten // read by the proxy handler, after routing
  request.upstreamStartedAt = process.hrtime.bigint()
}

/** Plain HTTP, or HTTPS when a certificate and key are configured. */
function serverOptions (proxy: Config['proxy']): { http: { maxHeaderSize: number } } | { https: { cert: Buffer, key: Buffer, maxHeaderSize: number } } {
  const maxHeaderSize = proxy.maxHeaderBytes
  const tls = readTlsFiles(proxy)
  return tls === null ? { http: { maxHeaderSize } } : { https: { ...tls, maxHeaderSize } }
}

/** The configured certificate and key (null for plain HTTP); the error names the field. */
export function readTlsFiles (proxy: Config['proxy']): { cert: Buffer, key: Buffer } | null {
  if (proxy.tlsCertFile === undefined || proxy.tlsKeyFile === undefined) return null
  const read = (path: string, field: string, variable: string): Buffer => {
    try {
      return readFileSync(path)
    } catch (err) {
      throw new Error(`proxy.${field} (${variable}): cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  return { cert: read(proxy.tlsCertFile, 'tlsCertFile', 'TLS_CERT_FILE'), key: read(proxy.tlsKeyFile, 'tlsKeyFile', 'TLS_KEY_FILE') }
}

function sendProblem (reply: FastifyReply<any, any, any, any>, body: Problem, verdict: Verdict | null, pk: PartitionKeys | null): void {
  if (verdict !== null) reply.headers(rateLimitHeaders(verdict, pk))
  reply.code(body.status).type(PROBLEM_TYPE).send(body)
}
