/**
 * Forwarding a request to its upstream and streaming the answer back: undici's dispatch API
 * straight into Node's response, with no stream in between. This replaced @fastify/reply-from
 * on the proxy path (it stays for WebSocket upgrades only): reply-from wraps every upstream
 * answer in a Readable, pipes it through Fastify's `reply.send`, parses the target URL and
 * copies the headers twice; measured here, that was 17 µs of the bare Fastify proxy's 50 µs of
 * CPU per request (docs/performance.md, "The proxy path without reply-from").
 *
 * What reply-from did and this keeps: `Connection` and the headers it names are not forwarded;
 * `Host` is the upstream's; a body streams through untouched; nothing is retried; one timeout
 * for the head and for each gap in the body; an answer sent before the request body was read
 * closes the connection. What it adds: the client leaving aborts the upstream request.
 */
import type { IncomingHttpHeaders, ServerResponse } from 'node:http'
import type { Dispatcher } from 'undici'
import type { FastifyReply, FastifyRequest } from 'fastify'

/** The reason an upstream request was aborted: the client went away. */
export class ClientGoneError extends Error {
  override name = 'ClientGoneError'
  readonly code = 'CLIENT_GONE'
}

export type UpstreamHeaders = Record<string, string | string[] | undefined>

export interface ForwardOptions {
  readonly dispatcher: Dispatcher
  /** Head timeout, and the longest pause between two body chunks. */
  readonly timeoutMs: number
  /** Client headers never forwarded (besides the hop-by-hop ones the forwarder drops itself). */
  readonly dropped: readonly string[]
  /** Adds to the headers going upstream (made for this request, `Host` already set). */
  readonly requestHeaders: (request: FastifyRequest, headers: UpstreamHeaders) => void
  /** Edits, in place, the upstream's response headers (undici's object for this response). */
  readonly responseHeaders: (headers: UpstreamHeaders, request: FastifyRequest) => void
  /** The upstream failed before its head: nothing has been sent to the client yet. */
  readonly failed: (reply: FastifyReply, error: Error & { code?: string }) => void
  /** The upstream failed after its head was sent: the client connection is being aborted. */
  readonly interrupted: (reply: FastifyReply, error: Error & { code?: string }) => void
}

/** Where a request goes: the upstream's origin and `Host`, and the path with its query. */
export interface ForwardTarget {
  readonly origin: string
  readonly host: string
  readonly path: string
}

export type Forward = (request: FastifyRequest, reply: FastifyReply, target: ForwardTarget) => void

export function forwarder (options: ForwardOptions): Forward {
  const { dispatcher } = options
  const timeout = options.timeoutMs
  const dropped = new Set<string>([...ALWAYS_DROPPED, ...options.dropped])
  return (request, reply, target) => {
    const raw = request.raw
    const headers = upstreamRequestHeaders(raw.headers, dropped)
    headers.host = target.host
    options.requestHeaders(request, headers)
    // Fastify's catch-all parser hands over the unread stream; GET, HEAD and the like have none.
    const body = request.body as NodeJS.ReadableStream | undefined
    const exchange = new Exchange(request, reply, options)
    dispatcher.dispatch({
      origin: target.origin,
      path: target.path,
      method: raw.method as Dispatcher.HttpMethod,
      headers,
      body: body === undefined ? null : body as unknown as Dispatcher.DispatchOptions['body'],
      headersTimeout: timeout,
      bodyTimeout: timeout
    }, exchange)
  }
}

/** Never copied from the client: about its connection, or set by the forwarder itself. */
const ALWAYS_DROPPED = ['connection', 'transfer-encoding', 'host'] as const

/**
 * The client's headers as they go upstream, less `dropped`, `Connection` and the headers it
 * names (so that a client cannot strip a header the gateway adds), `Transfer-Encoding` (undici
 * frames the body itself) and `Host`. A new object filled by assignment: a spread copy
 * (`{ ...headers }`) gets a map V8 cannot extend cheaply, and adding the gateway's five
 * headers to one cost 2.6 µs per request against 34 ns this way (measured in a loop).
 */
export function upstreamRequestHeaders (incoming: IncomingHttpHeaders, dropped: ReadonlySet<string>): UpstreamHeaders {
  const headers: UpstreamHeaders = {}
  const connection = incoming.connection
  const named = connection === undefined || connection === 'keep-alive' || connection === 'close' ? null : namedIn(connection)
  for (const name in incoming) {
    if (dropped.has(name) || (named !== null && named.has(name))) continue
    headers[name] = incoming[name]
  }
  return headers
}

function namedIn (connection: string): Set<string> {
  const names = new Set<string>()
  for (const name of connection.split(',')) names.add(name.trim().toLowerCase())
  return names
}

type Controller = Dispatcher.DispatchController

/**
 * One request's exchange with its upstream: undici's handler (its methods on the prototype,
 * so every request takes the same hidden class) writing into the client's response.
 */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #request: FastifyRequest
  readonly #reply: FastifyReply
  readonly #res: ServerResponse
  readonly #options: ForwardOptions
  #controller: Controller | null = null
  #headSent = false
  #done = false

  constructor (request: FastifyRequest, reply: FastifyReply, options: ForwardOptions) {
    this.#request = request
    this.#reply = reply
    this.#res = reply.raw
    this.#options = options
  }

  onRequestStart (controller: Controller): void {
    this.#controller = controller
    const res = this.#res
    // The response closing before it ended is the client leaving: nobody waits for the upstream.
    if (res.destroyed) controller.abort(new ClientGoneError('the client disconnected'))
    else res.once('close', this.#closed)
  }

  readonly #closed = (): void => {
    if (!this.#done) this.#controller?.abort(new ClientGoneError('the client disconnected'))
  }

  readonly #drained = (): void => { this.#controller?.resume() }

  onResponseStart (controller: Controller, statusCode: number, headers: UpstreamHeaders): void {
    // 1xx interim answers (103 Early Hints, say) are the upstream's business, not the client's.
    if (statusCode < 200) return
    const request = this.#request
    const reply = this.#reply
    const res = this.#res
    if (headers['transfer-encoding'] !== undefined) delete headers['transfer-encoding']
    this.#options.responseHeaders(headers, request)
    // An HTTP/1 connection cannot be reused until its request body has been read.
    if (!request.raw.complete) headers.connection = 'close'
    // The gateway's own headers (the request id) win over an upstream's of the same name.
    const own = reply.getHeaders()
    for (const name in own) headers[name] = own[name] as string | string[]
    try {
      res.writeHead(statusCode, headers as Record<string, string | string[]>)
    } catch (err) {
      // A status or header value Node refuses to write: the upstream's fault, answered 502.
      controller.abort(err as Error)
      return
    }
    this.#headSent = true
    // Fastify's reply is done with: the rest of the answer is written here.
    reply.hijack()
  }

  onResponseData (controller: Controller, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause()
      this.#res.once('drain', this.#drained)
    }
  }

  onResponseEnd (): void {
    this.#done = true
    this.#res.end()
  }

  onResponseError (_controller: Controller, error: Error & { code?: string }): void {
    this.#done = true
    const res = this.#res
    if (error instanceof ClientGoneError || res.destroyed) {
      this.#request.log.debug({ err: error }, 'client disconnected; upstream request aborted')
      if (!res.destroyed) res.destroy()
      return
    }
    if (!this.#headSent) {
      this.#options.failed(this.#reply, error)
      return
    }
    this.#options.interrupted(this.#reply, error)
    res.destroy(error)
  }
}

/**
 * Whether a request target may be forwarded as it is: a path, not an absolute URL or a
 * `//host` reference, and with no `..` segment, also once percent-decoded or with backslashes
 * read as slashes. The upstream would resolve such a segment above the prefix the gateway
 * routed and limited by (the rule @fastify/http-proxy applied before).
 */
export function isForwardable (url: string): boolean {
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  if (path.charCodeAt(0) !== 0x2f || path.charCodeAt(1) === 0x2f) return false
  // The common case, decided without decoding.
  if (!path.includes('%') && !path.includes('\\') && !path.includes('..')) return true
  let decoded: string
  try {
    decoded = decodeURIComponent(path.replaceAll('\\', '/'))
  } catch {
    return false
  }
  return !decoded.replaceAll('\\', '/').split('/').includes('..')
}
