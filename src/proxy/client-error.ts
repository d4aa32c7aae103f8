/**
 * Requests Node's HTTP parser refuses before Fastify sees them: a request head over
 * `proxy.maxHeaderBytes` (431), bytes that are not HTTP/1.1 (400), a client too slow to send
 * its request (408). Fastify's default handler answers these without a trace; this one answers
 * the same statuses as problem+json and counts them, so an operator sees them in
 * `gateway_rejected_requests_total` like every other refusal.
 */
import type { Socket } from 'node:net'
import type { Metrics } from '../observability/metrics.ts'
import { problem, rawProblemResponse, type Problem } from '../core/problems.ts'

type Refusal = readonly [reason: 'malformed-request' | 'client-timeout' | 'header-too-large', body: Problem]

export function clientErrorHandler (metrics: Metrics, maxHeaderBytes: number): (err: NodeJS.ErrnoException, socket: Socket) => void {
  const refusals: Record<string, Refusal> = {
    HPE_HEADER_OVERFLOW: ['header-too-large', problem('HEADER_TOO_LARGE', maxHeaderBytes)],
    ERR_HTTP_REQUEST_TIMEOUT: ['client-timeout', problem('REQUEST_TIMEOUT')]
  }
  const malformed: Refusal = ['malformed-request', problem('MALFORMED_REQUEST')]
  return (err, socket) => {
    // A reset connection has nobody left to answer.
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const [reason, body] = refusals[err.code ?? ''] ?? malformed
    metrics.rejectedRequests.inc({ reason })
    if (socket.writable) socket.write(rawProblemResponse(body))
    socket.destroy()
  }
}
