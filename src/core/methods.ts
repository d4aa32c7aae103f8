/**
 * The request methods the proxy accepts and forwards: every method Node's HTTP parser knows
 * (WebDAV's PROPFIND, MKCOL, LOCK, SEARCH, REPORT, ...), except CONNECT, which Node never hands
 * to a request handler (a tunnel, not a request). A method outside this list never gets past
 * Node's parser (400). TRACE is in the list but refused with 405 unless proxy.allowTrace.
 */
import { METHODS as NODE_METHODS } from 'node:http'

export const PROXIED_METHODS: readonly string[] = Object.freeze(NODE_METHODS.filter((m) => m !== 'CONNECT'))

/** Methods Fastify 5 routes without being told (the others are added with addHttpMethod). */
export const FASTIFY_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'TRACE', 'DELETE', 'OPTIONS', 'PATCH', 'PUT', 'POST', 'QUERY'])
