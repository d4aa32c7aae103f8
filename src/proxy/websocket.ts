/**
 * WebSocket upgrades. @fastify/http-proxy routes an upgrade through Fastify like any request,
 * so the limiter's onRequest hook decides it: one upgrade spends one request's cost, a refused
 * one gets the usual 429 and never reaches the upstream. Messages on an open connection are not
 * counted. What reaches the upstream's handshake is the client's own headers (the plugin's
 * default forwards only cookies), less the hop-by-hop and handshake headers the WebSocket
 * client sets itself, plus the request id and X-Forwarded-*, as for a proxied request.
 */
import type { FastifyRequest, FastifyServerOptions } from 'fastify'
import { addForwardedHeadersFor } from './forwarded.ts'
import { NOT_FORWARDED } from './headers.ts'
import { REQUEST_ID_HEADER } from '../observability/request-id.ts'
import type { BlockList, Socket } from 'node:net'
import { ServerResponse, type IncomingMessage, type Server as HttpServer } from 'node:http'
import type { Server as HttpsServer } from 'node:https'
import type { Duplex } from 'node:stream'
import { PROBLEM_TYPE, problem } from '../core/problems.ts'

type ConstraintStrategy = NonNullable<NonNullable<FastifyServerOptions['routerOptions']>['constraints']>[string]
type RouteStore = Parameters<ReturnType<ConstraintStrategy['storage']>['set']>[1]

const NOT_IN_HANDSHAKE = new Set<string>([
  'host', 'connection', 'transfer-encoding', 'content-length',
  'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'sec-websocket-accept',
  ...NOT_FORWARDED
])

export interface HandshakeOptions {
  readonly forwardedHeaders: boolean
  /** The live trusted-proxy list (it follows reloads). */
  readonly trustedProxies: () => BlockList | null
}

/** The headers of the upstream handshake for a client's upgrade request. */
export function handshakeHeaders (request: FastifyRequest, options: HandshakeOptions): Record<string, string | string[]> {
  const out: Record<string, string | string[] | undefined> = {}
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined && !NOT_IN_HANDSHAKE.has(name)) out[name] = value
  }
  out[REQUEST_ID_HEADER] = request.id
  if (options.forwardedHeaders) addForwardedHeadersFor(out, request, options.trustedProxies())
  return out as Record<string, string | string[]>
}

/**
 * Only `Upgrade: websocket` is a WebSocket. With an 'upgrade' listener installed, Node hands
 * every upgrade request to it (an `Upgrade: h2c` from `curl --http2` or Java's HttpClient on an
 * http:// URL, say), and the proxy plugin would refuse those with 400, where Node without the
 * listener serves them as plain requests. This gate, put in front of the plugin's listener,
 * serves other upgrades as plain requests again, on a connection closed after the response.
 * Their bodies cannot be recovered once Node has stopped parsing, so one with a body is refused
 * with a 400 that says to retry without `Upgrade` (clients attempt h2c on body-less requests).
 */
export function onlyWebSocketUpgrades (server: HttpServer | HttpsServer): void {
  const listeners = server.listeners('upgrade') as UpgradeListener[]
  server.removeAllListeners('upgrade')
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (/^websocket$/i.test(req.headers.upgrade ?? '')) {
      for (const listener of listeners) listener.call(server, req, socket, head)
      return
    }
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as Socket)
    res.on('finish', () => { res.detachSocket(socket as Socket); socket.end() })
    if (head.length > 0 || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined) {
      const body = JSON.stringify(problem('UPGRADE_WITH_BODY', req.headers.upgrade ?? ''))
      res.writeHead(400, { 'content-type': PROBLEM_TYPE, 'content-length': Buffer.byteLength(body) }).end(body)
      return
    }
    server.emit('request', req, res)
  })
}

type UpgradeListener = (req: IncomingMessage, socket: Duplex, head: Buffer) => void

/**
 * The router constraint that sends WebSocket upgrades (and only those) to @fastify/http-proxy's
 * route, while every other request takes the gateway's own forwarder on the same paths. Node
 * marks an upgrade request `upgrade`; `onlyWebSocketUpgrades` has already served the others as
 * plain requests.
 */
export const WEBSOCKET_UPGRADE: ConstraintStrategy = {
  name: 'upgrade',
  storage () {
    const handlers = new Map<string, RouteStore>()
    return { get: (value: string) => handlers.get(value) ?? null, set: (value: string, store: RouteStore) => { handlers.set(value, store) } }
  },
  deriveConstraint: (req: IncomingMessage): string => (req as IncomingMessage & { upgrade?: boolean }).upgrade === true && /^websocket$/i.test(req.headers.upgrade ?? '') ? 'websocket' : undefined as unknown as string,
  mustMatchWhenDerived: false,
  validate (value: unknown): void {
    if (value !== 'websocket') throw new Error('the upgrade constraint takes only "websocket"')
  }
}
