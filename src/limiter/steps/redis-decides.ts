/**
 * Step 4: PostgreSQL cannot decide (down, or Redis owns the bucket): Redis decides with an
 * atomic script on its own clock, and the bucket becomes Redis-owned until it is handed back
 * (hand-back.ts). Every gateway that meets a Redis-owned bucket lets Redis decide it, so no
 * bucket is decided by both stores at once.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { makeDecision } from '../../core/decision.ts'
import type { Decision } from '../../core/domain.ts'
import type { BucketRequest, RedisDecider } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import type { DbClock } from '../db-clock.ts'

/** Redis's answer: a decision, 'handing-back' (another gateway is merging it: ask PostgreSQL) or null (Redis cannot decide). */
export type RedisOutcome = Decision | 'handing-back' | null

export class RedisDecides {
  readonly #redis: RedisDecider
  readonly #clock: DbClock
  readonly #metrics: Metrics

  constructor (redis: RedisDecider, clock: DbClock, metrics: Metrics) {
    this.#redis = redis
    this.#clock = clock
    this.#metrics = metrics
  }

  /** `force`: take the bucket back from a hand-back (PostgreSQL is down after all). */
  async decide (request: BucketRequest, force: boolean): Promise<RedisOutcome> {
    const verdict = await this.#pastFence((dbNowMs) => this.#redis.decide(request, dbNowMs, force))
    if (verdict.kind !== 'decided') return verdict.kind === 'handing-back' ? 'handing-back' : null
    this.#metrics.failModeEvents.inc({ mode: 'redis-fallback' })
    return makeDecision(request.policy, request.cost, verdict.allowed, verdict.tokens, 'redis-fallback', 'redis')
  }

  /**
   * One request's buckets in one atomic step, charged all or none (null: this Redis cannot
   * decide them together, or cannot decide at all: decide them one by one). The same fence
   * waits as `decide`.
   */
  async decideGroup (requests: readonly BucketRequest[], force: boolean): Promise<Decision[] | 'handing-back' | null> {
    const verdict = await this.#pastFence((dbNowMs) => this.#redis.decideGroup(requests, dbNowMs, force))
    if (verdict === null || verdict.kind !== 'decided') return verdict?.kind === 'handing-back' ? 'handing-back' : null
    this.#metrics.failModeEvents.inc({ mode: 'redis-fallback' })
    return verdict.buckets.map((b, i) => {
      const r = requests[i]!
      return makeDecision(r.policy, r.cost, b.canPay, b.tokens, 'redis-fallback', 'redis')
    })
  }

  /**
   * Asks Redis, and again while the bucket is being taken over: waits out the fence (every
   * request of the bucket does, once per take-over). Bounded: a fence that keeps being renewed
   * (the bucket handed back and taken over again meanwhile) ends in the fail mode rather than
   * an unbounded wait.
   */
  async #pastFence<V extends { readonly kind: string, readonly waitMs?: number } | null> (ask: (dbNowMs: number) => Promise<V>): Promise<V> {
    // Before any PostgreSQL reply the estimate is only this host's clock, which may run ahead:
    // then a taken-over snapshot is not refilled to "now" at all (0). That can refuse a caller
    // the refill since its snapshot, never allow one twice.
    const clock = this.#clock
    let verdict = await ask(clock.observed ? clock.nowMs() : 0)
    for (let round = 0; verdict !== null && verdict.kind === 'taking-over' && round < 5; round++) {
      await sleep(Math.ceil(verdict.waitMs ?? 0) + 1)
      verdict = await ask(clock.observed ? clock.nowMs() : 0)
    }
    return verdict
  }

  /** Gives a charged bucket its tokens back (false: Redis could not, or no longer owns it). */
  async refund (request: BucketRequest): Promise<boolean> {
    return await this.#redis.refund(request)
  }
}
