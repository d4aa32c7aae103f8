/**
 * The gateway's own errors, each with a code, like Fastify's lib/errors.js. Store adapters turn
 * their clients' failures into StoreFailure, so the limiter never sees a driver's error types;
 * the original error is kept as `cause` and reaches the one log line of the transition.
 */

/** A store did not answer (refused, reset, timed out, past its deadline): the fallbacks apply. */
export class StoreFailure extends Error {
  override name = 'StoreFailure'
  readonly code = 'GW_STORE_FAILURE'
  readonly store: 'postgres' | 'redis'
  /** It answered nothing within its deadline (as opposed to an error or a refused connection). */
  readonly timedOut: boolean

  constructor (store: 'postgres' | 'redis', message: string, options: { cause?: unknown, timedOut?: boolean } = {}) {
    super(message, { cause: options.cause })
    this.store = store
    this.timedOut = options.timedOut ?? false
  }
}

/** No store can decide and the fail mode refuses to guess (closed): the caller gets 503. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
  readonly code = 'GW_STORES_UNAVAILABLE'
  /** Whole seconds for the Retry-After header. */
  readonly retryAfterSeconds: number

  constructor (message: string, options: { cause?: unknown, retryAfterSeconds?: number } = {}) {
    super(message, { cause: options.cause })
    this.retryAfterSeconds = options.retryAfterSeconds ?? 1
  }
}

/** A request to the control API that cannot be served as asked (400, with the reason). */
export class BadRequest extends Error {
  override name = 'BadRequest'
  readonly code = 'GW_BAD_REQUEST'
  readonly statusCode = 400
}
