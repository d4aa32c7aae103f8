/**
 * The connection pool towards the upstream, handed to @fastify/reply-from as its undici
 * instance. It adds one thing reply-from lacks: when the client that a forwarded request
 * belongs to disconnects, the upstream request is aborted too (reply-from would otherwise keep
 * the upstream working until it answers or times out, for nobody).
 *
 * reply-from gives the dispatcher only the outgoing request, so the proxy registers each
 * request's client socket under its X-Request-Id just before forwarding (`watch`), and the
 * dispatcher picks it up from that header.
 */
import type { Socket } from 'node:net'
import { Agent, type Dispatcher } from 'undici'

/** The reason an upstream request was aborted: the client went away. */
export class ClientGoneError extends Error {
  override name = 'ClientGoneError'
  readonly code = 'CLIENT_GONE'
}

type RequestCallback = (err: Error | null, data: Dispatcher.ResponseData) => void

export class UpstreamDispatcher {
  readonly #agent: Agent
  readonly #clients = new Map<string, Socket>()

  constructor (options: Agent.Options) {
    this.#agent = new Agent(options)
  }

  /** Registers the client socket of a request about to be forwarded. */
  watch (requestId: string, socket: Socket): void {
    this.#clients.set(requestId, socket)
  }

  /** Drops a registration that was never used (the request failed before forwarding). */
  forget (requestId: string): void {
    this.#clients.delete(requestId)
  }

  request (options: Dispatcher.RequestOptions, callback: RequestCallback): void {
    const headers = options.headers as Record<string, string | string[] | undefined> | undefined
    const id = headers?.['x-request-id']
    const socket = typeof id === 'string' ? this.#clients.get(id) : undefined
    if (socket === undefined) {
      this.#agent.request(options, callback)
      return
    }
    this.#clients.delete(id as string)
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
