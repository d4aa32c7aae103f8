/**
 * A client-side deadline on a store round trip. postgres.js has no query timeout, and a server
 * that keeps the connection open but never answers (a blackholed path, a hung or SIGSTOPped
 * backend) is never reached by `statement_timeout`: without this, every request waiting on it
 * would hang. One timer per round trip (a whole batch), never one per request.
 */
import { StoreFailure } from '../core/errors.ts'

export function withDeadline<T> (work: Promise<T>, ms: number, store: 'postgres' | 'redis', what: string, onExpire: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      onExpire()
      reject(new StoreFailure(store, `${what}: no answer within ${ms} ms`, { timedOut: true }))
    }, ms)
    work.then((value) => { clearTimeout(timer); resolve(value) }, (err: unknown) => { clearTimeout(timer); reject(err) })
  })
}
