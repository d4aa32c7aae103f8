/**
 * Step 5: neither store can decide; FAIL_MODE says what happens: `local` in-process buckets
 * (each gateway a 1/FAIL_LOCAL_REPLICAS share), `open` forwards unlimited, `closed` refuses
 * with 503 (StoreUnavailableError, carrying the store error that led here).
 */
import type { Config } from '../../config/schema.ts'
import { makeDecision } from '../../core/decision.ts'
import type { Decision } from '../../core/domain.ts'
import { StoreUnavailableError } from '../../core/errors.ts'
import type { BucketRequest } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import type { DecidingMode } from '../mode.ts'
import { LocalBuckets } from './local-buckets.ts'

/** Who decides in this step: in-process buckets, nobody (forwarded), or nobody (refused). */
export type FailModeDeciding = 'local-fallback' | 'fail-open' | 'none'

export class FailMode {
  #config: Config['fallback']
  #local: LocalBuckets
  readonly #mode: DecidingMode
  readonly #metrics: Metrics
  readonly #now: (() => number) | undefined

  /** `now`: the local buckets' clock (default performance.now). */
  constructor (config: Config['fallback'], mode: DecidingMode, metrics: Metrics, now?: () => number) {
    this.#config = config
    this.#mode = mode
    this.#metrics = metrics
    this.#now = now
    this.#local = new LocalBuckets(config.localReplicas, config.localMaxKeys, now)
    // Back on a store: the local shares are forgotten (the stores hold the truth again).
    mode.onChange((_, previous) => { if (previous === 'local') this.#local.clear() })
  }

  /** A reload: the new numbers apply; the local buckets stay unless their shares changed. */
  reconfigure (config: Config['fallback']): void {
    this.#config = config
    if (config.localReplicas !== this.#local.replicas || config.localMaxKeys !== this.#local.maxKeys) {
      this.#local = new LocalBuckets(config.localReplicas, config.localMaxKeys, this.#now)
    }
  }

  get deciding (): FailModeDeciding {
    const mode = this.#config.mode
    return mode === 'local' ? 'local-fallback' : mode === 'open' ? 'fail-open' : 'none'
  }

  /** `cause`: the store failure that left no store to decide. Throws StoreUnavailableError when closed. */
  decide (request: BucketRequest, cause: unknown): Decision {
    const mode = this.#config.mode
    this.#mode.enter(mode, cause === undefined ? {} : { err: cause })
    this.#metrics.failModeEvents.inc({ mode })
    const { policy, cost } = request
    if (mode === 'closed') {
      throw new StoreUnavailableError('The rate limiter cannot reach its stores; retry shortly.',
        { cause, retryAfterSeconds: this.#config.closedRetryAfterSeconds })
    }
    if (mode === 'open') return makeDecision(policy, cost, true, Math.max(0, policy.capacity - cost), 'fail-open', 'gateway', null)
    const d = this.#local.consume(policy, request.userId, cost)
    // A cost above this gateway's share could never be paid locally: wait for the stores.
    return makeDecision(policy, cost, d.allowed, d.tokens, 'local-fallback', 'gateway', d.share,
      cost > d.share.capacity ? this.#config.probeIntervalMs : undefined)
  }

  /** Gives a local-fallback charge back to this gateway's share (never above it). */
  refund (request: BucketRequest): boolean {
    return this.#local.refund(request.policy, request.userId, request.cost)
  }
}
