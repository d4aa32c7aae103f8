/**
 * The pool's TCP connections, made here (postgres.js's `socket` option) so that a connection
 * waiting too long for an answer can be destroyed: postgres.js then fails its query and opens a
 * new connection for the next one, instead of queueing more work behind a dead peer. A
 * connection "waits" from the first write after its last read until data arrives.
 * TCP keep-alive is set by postgres.js on every connection (`keep_alive`).
 *
 * Under TLS, postgres.js wraps the socket and writes through the TLS layer, which bypasses
 * this tracking: such connections cannot be told apart, so a deadline destroys them all
 * (they reconnect; PostgreSQL is treated as down at that point anyway).
 */
import { connect, type Socket } from 'node:net'

interface Tracked { socket: Socket, waitingSince: number, writes: number }

export interface SocketOptions {
  readonly host: readonly string[]
  readonly port: readonly number[]
  readonly path?: string | false | undefined
}

export class PoolSockets {
  readonly #open = new Set<Tracked>()
  #next = 0

  get size (): number { return this.#open.size }

  /** The factory postgres.js calls for each connection. */
  readonly create = (options: SocketOptions): Socket => {
    const i = this.#next++ % Math.max(1, options.host.length)
    const socket = typeof options.path === 'string' && options.path !== ''
      ? connect(options.path)
      : connect(options.port[i] ?? options.port[0] ?? 5432, options.host[i] ?? options.host[0] ?? 'localhost')
    const tracked: Tracked = { socket, waitingSince: 0, writes: 0 }
    const write = socket.write
    socket.write = function (this: Socket, ...args: Parameters<Socket['write']>): boolean {
      tracked.writes++
      if (tracked.waitingSince === 0) tracked.waitingSince = performance.now()
      return write.apply(this, args)
    } as Socket['write']
    socket.on('data', () => { tracked.waitingSince = 0 })
    socket.once('close', () => this.#open.delete(tracked))
    // Handed over before it connects (writes wait in the socket): postgres.js's own connect
    // timeout, error handling and reconnection then apply as to its own sockets.
    socket.once('connect', () => this.#open.add(tracked))
    return socket
  }

  /** Destroys the connections that have waited at least `ms` for an answer; returns how many. */
  destroyStalled (ms: number): number {
    const now = performance.now()
    let n = 0
    for (const t of this.#open) {
      // No write seen here since the start-up message: wrapped by TLS, not trackable.
      if ((t.waitingSince !== 0 && now - t.waitingSince >= ms) || t.writes <= 1) {
        t.socket.destroy()
        this.#open.delete(t)
        n++
      }
    }
    return n
  }
}
