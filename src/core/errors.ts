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

/**
 * `postgres.migrate` is false and the database lacks migrations this version needs (their
 * functions decide every request): the gateway does not start, rather than fail each decision.
 */
export class MigrationsMissing extends Error {
  override name = 'MigrationsMissing'
  readonly code = 'GW_MIGRATIONS_MISSING'
  readonly missing: readonly string[]

  constructor (missing: readonly string[]) {
    super(`the database lacks migration${missing.length === 1 ? '' : 's'} ${missing.join(', ')} and postgres.migrate is false: ` +
      'apply them first (npm run migrate, or ratelimit-gateway migrate), or let the gateway apply them (postgres.migrate: true, the default)')
    this.missing = missing
  }
}

/** A request to the control API that cannot be served as asked (400, with the reason). */
export class BadRequest extends Error {
  override name = 'BadRequest'
  readonly code = 'GW_BAD_REQUEST'
  readonly statusCode = 400
}

/**
 * A worker process (proxy.workers > 1) exited before it was serving, or WORKERS cannot be used
 * as configured: the gateway does not start (exit 1) rather than restarting it in a loop.
 */
export class WorkerStartError extends Error {
  override name = 'WorkerStartError'
  readonly code = 'GW_WORKER_START_FAILED'
}

/** A question to the cluster primary or to the other workers got no answer in time (IPC). */
export class WorkerTimeout extends Error {
  override name = 'WorkerTimeout'
  readonly code = 'GW_WORKER_TIMEOUT'
}
