/**
 * The connection pool towards the upstreams, handed to @fastify/reply-from as its undici
 * instance. It adds one thing reply-from lacks: when the client that a forwarded request
 * belongs to disconnects, the upstream request is aborted too (reply-from would otherwise keep
 * the upstream working until it answers or times out, for nobody).
 *
 * reply-from gives the dispatcher only the outgoing request, so the proxy registers each
 * request's client socket just before forwarding (`watch`) and passes the token it gets in an
 * internal header, which the dispatcher removes before the request leaves. (Not the request
 * id: clients may choose theirs, so two requests can share one.)
 */
import type { Socket } from 'node:net'
import { Agent, type Dispatcher } from 'undici'

export const FORWARD_TOKEN_HEADER = 'x-gateway-forward-token'

/** The reason an upstream request was aborted: the client went away. */
export class ClientGoneError extends Error {
  override name = 'ClientGoneError'
  readonly code = 'CLIENT_GONE'
}

type RequestCallback = (err: Error | null, data: Dispatcher.ResponseData) => void

export class UpstreamDispatcher {
  readonly #agent: Agent
  readonly #clients = new Map<string, Socket>()
  #next = 0

  constructor (options: Agent.Options) {
    this.#agent = new Agent(options)
  }

  /** Registers the client socket of a request about to be forwarded; returns its token. */
  watch (socket: Socket): string {
    const token = (this.#next++).toString(36)
    this.#clients.set(token, socket)
    return token
  }

  /** Drops a registration (normally consumed by `request`; this covers requests that never were). */
  forget (token: string): void {
    this.#clients.delete(token)
  }

  request (options: Dispatcher.RequestOptions, callback: RequestCallback): void {
    const headers = options.headers as Record<string, string | string[] | undefined> | undefined
    const token = headers?.[FORWARD_TOKEN_HEADER]
    if (typeof token !== 'string') {
      this.#agent.request(options, callback)
      return
    }
    const socket = this.#clients.get(token)
    this.#clients.delete(token)
    // reply-from hands us its own copy of the headers: the token never leaves the gateway.
    delete headers![FORWARD_TOKEN_HEADER]
    if (socket === undefined) {
      this.#agent.request(options, callback)
      return
    }
    const controller = new AbortController()
    const abort = (): void => controller.abort(new ClientGoneError('the client disconnected'))
    if (socket.destroyed) abort()
    else socket.once('close', abort)
    this.#agent.request({ ...options, signal: controller.signal }, (err, data) => {
      if (err !== null) {
        socket.off('close', abort)
      } else {
        // The signal stays armed while the body streams: a client leaving mid-body aborts it.
        data.body.once('close', () => socket.off('close', abort))
      }
      callback(err, data)
    })
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }

  async destroy (): Promise<void> {
    await this.#agent.destroy()
  }
}
