/**
 * The access log (log.access, ACCESS_LOG): one JSON line per request at info, written when the
 * response is done. Built only when enabled; while off the proxy does no per-request work for it.
 */
import { createHash } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from '../observability/log.ts'

export type AccessLogger = (request: FastifyRequest, reply: FastifyReply) => void

const round = (ms: number): number => Math.round(ms * 1000) / 1000

export function accessLogger (log: Logger, caller: 'raw' | 'hashed'): AccessLogger {
  const callerOf = caller === 'raw'
    ? (id: string) => id
    : (id: string) => createHash('sha256').update(id).digest('hex').slice(0, 16)
  return (request, reply) => {
    const d = request.decision
    const forwarded = request.upstreamStartedAt !== 0n
    log.info({
      request_id: request.id,
      method: request.method,
      path: request.accessPath,
      status: reply.statusCode,
      duration_ms: round(reply.elapsedTime),
      // Written to the connection for this response, head included (nginx's $bytes_sent):
      // one response at a time per connection, so the counter's growth is this response.
      bytes: request.raw.socket.bytesWritten - request.accessBytesAt,
      caller: request.accessCaller === null ? null : callerOf(request.accessCaller),
      policy: d?.primary.policy.name ?? null,
      // allowed/limited: a bucket decided; shadow-*: a shadow policy; forwarded: no bucket
      // (allow list, CORS preflight); refused: answered before any bucket (400/401/403/405/503).
      decision: d !== null ? (d.allowed ? 'allowed' : 'limited') : request.shadow !== null ? `shadow-${request.shadow}` : forwarded ? 'forwarded' : 'refused',
      source: d?.primary.source ?? null,
      upstream_status: request.upstreamMs >= 0 ? reply.statusCode : null,
      upstream_ms: request.upstreamMs >= 0 ? round(request.upstreamMs) : null
    }, 'request')
  }
}
