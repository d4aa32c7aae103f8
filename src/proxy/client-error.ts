/**
 * Requests Node's HTTP parser refuses before Fastify sees them: a request head over
 * `proxy.maxHeaderBytes` (431), bytes that are not HTTP/1.1 (400), a client too slow to send
 * its request (408). Fastify's default handler answers these without a trace; this one answers
 * the same statuses as problem+json and counts them, so an operator sees them in
 * `gateway_rejected_requests_total` like every other refusal.
 */
import type { Socket } from 'node:net'
import type { Metrics } from '../observability/metrics.ts'
import { PROBLEM_TYPE, problem } from '../core/problems.ts'

type Refusal = readonly [status: 400 | 408 | 431, reason: 'malformed-request' | 'client-timeout' | 'header-too-large', detail: string]

export function clientErrorHandler (metrics: Metrics, maxHeaderBytes: number): (err: NodeJS.ErrnoException, socket: Socket) => void {
  const refusals: Record<string, Refusal> = {
    HPE_HEADER_OVERFLOW: [431, 'header-too-large', `The request head is larger than ${maxHeaderBytes} bytes.`],
    ERR_HTTP_REQUEST_TIMEOUT: [408, 'client-timeout', 'The request was not received in time.']
  }
  const malformed: Refusal = [400, 'malformed-request', 'The request is not valid HTTP/1.1.']
  return (err, socket) => {
    // A reset connection has nobody left to answer.
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const [status, reason, detail] = refusals[err.code ?? ''] ?? malformed
    metrics.rejectedRequests.inc({ reason })
    if (socket.writable) {
      const p = problem(status, detail)
      const body = JSON.stringify(p)
      socket.write(`HTTP/1.1 ${status} ${p.title}\r\nContent-Type: ${PROBLEM_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    }
    socket.destroy()
  }
}
