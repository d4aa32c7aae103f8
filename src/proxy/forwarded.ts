/**
 * The X-Forwarded-* headers a reverse proxy adds, so the upstream still knows who called and
 * how: the client's address is appended to X-Forwarded-For (the upstream decides how far to
 * believe the hops before it, as every proxy does); X-Forwarded-Proto and X-Forwarded-Host say
 * what the client used, since the upstream request carries the upstream's Host. Values a client
 * sent for those two are kept only from a trusted proxy (`identity.trustedProxies`): from
 * anyone else they would let a client claim to have come over HTTPS or through another host.
 * Pure: edits the outgoing header object in place.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { BlockList, Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { canonicalAddress, isTrusted } from '../identity/client-address.ts'

type Headers = Record<string, string | string[] | undefined>

export function addForwardedHeaders (headers: Headers, peer: string | undefined, scheme: 'http' | 'https', host: string | undefined, trusted: BlockList | null): void {
  const client = peer === undefined ? undefined : canonicalAddress(peer)
  if (client !== undefined) {
    const prior = headers['x-forwarded-for']
    headers['x-forwarded-for'] = prior === undefined ? client : `${Array.isArray(prior) ? prior.join(', ') : prior}, ${client}`
  }
  const fromTrusted = trusted !== null && client !== undefined && isTrusted(trusted, client)
  if (!fromTrusted || headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = scheme
  if (!fromTrusted || headers['x-forwarded-host'] === undefined) {
    if (host !== undefined) headers['x-forwarded-host'] = host
    else if (headers['x-forwarded-host'] !== undefined) delete headers['x-forwarded-host']
  }
}

/** The same, for the client request a proxied request or a WebSocket handshake is made for. */
export function addForwardedHeadersFor (headers: Headers, client: { readonly socket: Socket, readonly headers: IncomingHttpHeaders }, trusted: BlockList | null): void {
  const scheme = (client.socket as TLSSocket).encrypted === true ? 'https' : 'http'
  addForwardedHeaders(headers, client.socket.remoteAddress, scheme, client.headers.host, trusted)
}
