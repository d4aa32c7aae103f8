/**
 * Latency one request at a time: one keep-alive connection, sequential requests, the caller
 * header cycling over many callers. autocannon and wrk report whole milliseconds at the
 * percentiles that matter here, and what the gateway adds over the bare proxy is a fraction of
 * one, so this times each request itself (hrtime, microseconds) from the write of its bytes to
 * the end of its response.
 *
 * A raw socket with the request bytes prepared in advance keeps the client's own cost out of
 * the figure as far as possible; the client's cost is the same for every server measured.
 */
import { connect, type Socket } from 'node:net'

export interface LatencyResult {
  requests: number
  p50Us: number
  p90Us: number
  p99Us: number
  /** Responses other than 2xx. */
  non2xx: number
}

/** Reads one HTTP/1.1 response with Content-Length (what every server measured here sends). */
class ResponseReader {
  #buffer: Buffer = Buffer.alloc(0)
  #resolve: ((status: number) => void) | null = null
  #reject: ((err: Error) => void) | null = null

  constructor (socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk])
      this.#drain()
    })
    socket.on('error', (err) => this.#reject?.(err))
    socket.on('close', () => this.#reject?.(new Error('connection closed by the server')))
  }

  next (): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#resolve = resolve
      this.#reject = reject
      this.#drain()
    })
  }

  #drain (): void {
    if (this.#resolve === null) return
    const end = this.#buffer.indexOf('\r\n\r\n')
    if (end < 0) return
    const head = this.#buffer.subarray(0, end).toString('latin1')
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0)
    const total = end + 4 + length
    if (this.#buffer.length < total) return
    const status = Number(head.slice(9, 12))
    this.#buffer = this.#buffer.subarray(total)
    const resolve = this.#resolve
    this.#resolve = null
    this.#reject = null
    resolve(status)
  }
}

function percentile (sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

/**
 * `warmup` requests first (not recorded), then `requests` timed ones, callers `prefix`0..`callers`-1.
 */
export async function sequentialLatency (url: string, prefix: string, callers: number, requests: number, warmup: number): Promise<LatencyResult> {
  const { hostname, port } = new URL(url)
  const socket = connect({ host: hostname, port: Number(port), noDelay: true })
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  const reader = new ResponseReader(socket)
  const requestBytes = (i: number): Buffer => Buffer.from(`GET / HTTP/1.1\r\nhost: ${hostname}:${port}\r\nx-user-id: ${prefix}${i % callers}\r\n\r\n`, 'latin1')
  const times = new Float64Array(requests)
  let non2xx = 0
  try {
    for (let i = 0; i < warmup + requests; i++) {
      const bytes = requestBytes(i)
      const started = process.hrtime.bigint()
      socket.write(bytes)
      const status = await reader.next()
      const us = Number(process.hrtime.bigint() - started) / 1000
      if (i >= warmup) {
        times[i - warmup] = us
        if (status < 200 || status > 299) non2xx++
      }
    }
  } finally {
    socket.destroy()
  }
  times.sort()
  return { requests, p50Us: percentile(times, 50), p90Us: percentile(times, 90), p99Us: percentile(times, 99), non2xx }
}
