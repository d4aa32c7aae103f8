/**
 * WebSocket upgrades. @fastify/http-proxy routes an upgrade through Fastify like any request,
 * so the limiter's onRequest hook decides it: one upgrade spends one request's cost, a refused
 * one gets the usual 429 and never reaches the upstream. Messages on an open connection are not
 * counted. What reaches the upstream's handshake is the client's own headers (the plugin's
 * default forwards only cookies), less the hop-by-hop and handshake headers the WebSocket
 * client sets itself, plus the request id and X-Forwarded-*, as for a proxied request.
 */
import type { FastifyRequest } from 'fastify'
import { addForwardedHeadersFor } from './forwarded.ts'
import { NOT_FORWARDED } from './headers.ts'
import { REQUEST_ID_HEADER } from './request-id.ts'
import type { BlockList } from 'node:net'

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
