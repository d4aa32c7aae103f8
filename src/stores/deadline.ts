/**
 * A client-side deadline on a store round trip. postgres.js has no query timeout, and a server
 * that keeps the connection open but never answers (a blackholed path, a hung or SIGSTOPped
 * backend) is never reached by `statement_timeout`: without this, every request waiting on it
 * would hang. One timer per round trip (a whole batch), never one per request.
 *
 * An expired timer is only a suspicion: when the event loop was blocked past the deadline (a
 * long GC, a starved CPU), Node runs expired timers before reading the I/O that arrived
 * meanwhile, so an answer that came back in time would be taken for a dead store, and a
 * healthy PostgreSQL sent into the fallback. The verdict therefore waits for `setImmediate`,
 * which runs after that I/O has been read: only a round trip still unanswered then has expired.
 */
import { StoreFailure } from '../core/errors.ts'

export function withDeadline<T> (work: Promise<T>, ms: number, store: 'postgres' | 'redis', what: string, onExpire: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (settled) return
        settled = true
        onExpire()
        reject(new StoreFailure(store, `${what}: no answer within ${ms} ms`, { timedOut: true }))
      })
    }, ms)
    work.then((value) => {
      settled = true
      clearTimeout(timer)
      resolve(value)
    }, (err: unknown) => {
      settled = true
      clearTimeout(timer)
      reject(err)
    })
  })
}
