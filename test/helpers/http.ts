/** HTTP helpers for tests: plain requests, raw bytes on a socket, polling with a deadline. */
import { connect } from 'node:net'

export interface Reply {
  status: number
  headers: Headers
  body: string
  json: <T = Record<string, unknown>>() => T
}

export async function send (url: string, init: RequestInit & { user?: string } = {}): Promise<Reply> {
  const headers = new Headers(init.headers)
  if (init.user !== undefined) headers.set('x-user-id', init.user)
  const res = await fetch(url, { ...init, headers })
  const body = await res.text()
  return { status: res.status, headers: res.headers, body, json: <T>() => JSON.parse(body) as T }
}

/** Sends `count` requests for `user` at once and returns their replies. */
export async function burst (url: string, user: string, count: number): Promise<Reply[]> {
  return await Promise.all(Array.from({ length: count }, () => send(url, { user })))
}

/** Writes raw bytes (for header values fetch refuses to send) and returns the status code. */
export async function rawStatus (port: number, head: string | Buffer): Promise<{ status: number, text: string }> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    socket.on('data', (c: Buffer) => {
      chunks.push(c)
      const text = Buffer.concat(chunks).toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      const len = /content-length: (\d+)/i.exec(text)
      if (end >= 0 && (len === null || text.length >= end + 4 + Number(len[1]))) socket.end()
    })
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('latin1')
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text)
      if (m === null) reject(new Error('no HTTP status in: ' + JSON.stringify(text)))
      else resolve({ status: Number(m[1]), text })
    })
    socket.on('error', reject)
    socket.write(head)
  })
}

/** Polls `probe` until it returns a truthy value or the deadline passes. */
export async function waitFor<T> (probe: () => Promise<T> | T, { timeoutMs = 10_000, intervalMs = 25, what = 'condition' } = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/** Resolves at an absolute time (performance.now() based); never early, unlike a bare timer. */
export async function until (atMs: number): Promise<void> {
  for (;;) {
    const left = atMs - performance.now()
    if (left <= 0) return
    await new Promise((resolve) => setTimeout(resolve, Math.max(1, left)))
  }
}
