/**
 * Which store decides, and what happens when none can (FAIL_MODE):
 *
 *   postgres        normal operation (Redis as a read-first cache)
 *   redis-fallback  PostgreSQL unreachable: Redis decides atomically
 *   local           both unreachable: in-process buckets, each a 1/replicas share
 *   open            both unreachable: requests are forwarded unlimited, marked fail-open
 *   closed          both unreachable: 503 with Retry-After
 *
 * Every change of mode is logged once (never per request) and shown by the
 * gateway_fail_mode_active gauge; every request decided outside `postgres` is counted in
 * gateway_fail_mode_events_total.
 */
import { msUntilAffordable, msUntilFull } from '../core/token-bucket.ts'
import type { Config } from '../config/schema.ts'
import type { Decision, Policy } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { LocalBuckets } from './local-buckets.ts'

export type Mode = 'postgres' | 'redis-fallback' | 'local' | 'open' | 'closed'

/** PostgreSQL could not decide and the fail mode refuses to guess (closed): the caller gets 503. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
  /** Whole seconds for the Retry-After header. */
  readonly retryAfterSeconds: number

  constructor (message: string, options: { cause?: unknown, retryAfterSeconds?: number } = {}) {
    super(message, { cause: options.cause })
    this.retryAfterSeconds = options.retryAfterSeconds ?? 1
  }
}

const MESSAGES: Record<Mode, string> = {
  postgres: 'PostgreSQL decides again',
  'redis-fallback': 'PostgreSQL unreachable: Redis decides (atomic script, Redis clock) until it returns',
  local: 'PostgreSQL and Redis unreachable: limiting with in-process buckets (FAIL_MODE=local)',
  open: 'PostgreSQL and Redis unreachable: forwarding requests without limits (FAIL_MODE=open)',
  closed: 'PostgreSQL and Redis unreachable: refusing requests with 503 (FAIL_MODE=closed)'
}

export class FailMode {
  readonly #config: Config['fallback']
  readonly #metrics: Metrics
  readonly #log: Logger
  readonly local: LocalBuckets
  #mode: Mode = 'postgres'

  constructor (config: Config['fallback'], metrics: Metrics, log: Logger) {
    this.#config = config
    this.#metrics = metrics
    this.#log = log
    this.local = new LocalBuckets(config.localReplicas, config.localMaxKeys)
  }

  get mode (): Mode { return this.#mode }

  /** Records the mode that decided; logs and updates the gauge only when it changed. */
  enter (mode: Mode, context: Record<string, unknown> = {}): void {
    if (mode === this.#mode) return
    const previous = this.#mode
    this.#mode = mode
    this.#metrics.failModeActive.set({ mode: previous }, 0)
    this.#metrics.failModeActive.set({ mode }, 1)
    const fields = { mode, previous_mode: previous, ...context }
    if (mode === 'postgres') this.#log.warn(fields, MESSAGES[mode])
    else this.#log.error(fields, MESSAGES[mode])
    if (previous === 'local') this.local.clear()
  }

  /** Decides with neither store (the configured FAIL_MODE). Throws StoreUnavailableError when closed. */
  decide (policy: Policy, userId: string, cost: number, cause: unknown): Decision {
    const mode = this.#config.mode
    this.enter(mode)
    this.#metrics.failModeEvents.inc({ mode })
    if (mode === 'closed') {
      throw new StoreUnavailableError('The rate limiter cannot reach its stores; retry shortly.',
        { cause, retryAfterSeconds: this.#config.closedRetryAfterSeconds })
    }
    if (mode === 'open') {
      return { allowed: true, policy, cost, tokens: Math.max(0, policy.capacity - cost), resetAfterMs: 0, retryAfterMs: 0, source: 'fail-open' }
    }
    const d = this.local.consume(policy, userId, cost)
    return {
      allowed: d.allowed,
      policy,
      cost,
      tokens: d.tokens,
      resetAfterMs: msUntilFull(d.tokens, d.share),
      // A cost above this gateway's share could never be paid locally: wait for the stores.
      retryAfterMs: d.allowed ? 0 : cost > d.share.capacity ? this.#config.probeIntervalMs : msUntilAffordable(d.tokens, d.share, cost),
      source: 'local-fallback'
    }
  }
}
