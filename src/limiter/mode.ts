/**
 * Who decides right now, as this gateway sees it:
 *
 *   postgres        normal operation (Redis as a read-first cache)
 *   redis-fallback  PostgreSQL unreachable: Redis decides atomically
 *   local           both unreachable: in-process buckets, each a 1/replicas share
 *   open            both unreachable: requests are forwarded unlimited, marked fail-open
 *   closed          both unreachable: 503 with Retry-After
 *
 * Every change is logged once (never per request), with the store error that caused it, and
 * shown by the gateway_fail_mode_active gauge.
 */
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'

export type Mode = 'postgres' | 'redis-fallback' | 'local' | 'open' | 'closed'

const MESSAGES: Record<Mode, string> = {
  postgres: 'PostgreSQL decides again',
  'redis-fallback': 'PostgreSQL unreachable: Redis decides (atomic script, Redis clock) until it returns',
  local: 'PostgreSQL and Redis unreachable: limiting with in-process buckets (FAIL_MODE=local)',
  open: 'PostgreSQL and Redis unreachable: forwarding requests without limits (FAIL_MODE=open)',
  closed: 'PostgreSQL and Redis unreachable: refusing requests with 503 (FAIL_MODE=closed)'
}

export class DecidingMode {
  readonly #metrics: Metrics
  readonly #log: Logger
  readonly #listeners: Array<(mode: Mode, previous: Mode) => void> = []
  #mode: Mode = 'postgres'

  constructor (metrics: Metrics, log: Logger) {
    this.#metrics = metrics
    this.#log = log
  }

  get current (): Mode { return this.#mode }

  onChange (listener: (mode: Mode, previous: Mode) => void): void { this.#listeners.push(listener) }

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
    for (const l of this.#listeners) l(mode, previous)
  }
}
