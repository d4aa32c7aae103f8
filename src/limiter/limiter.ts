/**
 * The decision flow (DESIGN.md): the only module that knows about both stores.
 *
 * 1. Read the caller's snapshot from Redis.
 * 2. A snapshot that, refilled to now, cannot pay the cost denies at once: consumption only
 *    lowers a bucket and refill is a fixed function of time, so a stale snapshot never shows
 *    fewer tokens than the truth, and a denial read from it is always right.
 * 3. Otherwise PostgreSQL decides atomically; every allowance is decided there.
 * 4. The resulting snapshot is written back to Redis, best effort, off the response path.
 */
import { canPay, fullRefillSeconds, msUntilAffordable, msUntilFull, tokensAt } from '../bucket/token-bucket.ts'
import type { Decision, DecisionSource, Policy } from '../domain.ts'
import type { Logger } from '../log.ts'
import type { Metrics } from '../metrics.ts'
import type { PostgresStore } from '../stores/postgres.ts'
import type { RedisCache } from '../stores/redis.ts'
import { DbClock } from './db-clock.ts'

/**
 * Redis denies only if the bucket could not pay even this much later than our estimate of
 * the database clock: an estimate that runs early must not deny a caller who has the tokens.
 * Anything closer is left to PostgreSQL, which is always right.
 */
const REDIS_DENY_MARGIN_MS = 2

/** PostgreSQL could not decide; the caller gets 503 (the fail modes of issue 5 build on this). */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
}

export function makeDecision (policy: Policy, cost: number, allowed: boolean, tokens: number, source: DecisionSource): Decision {
  return {
    allowed,
    policy,
    cost,
    tokens,
    source,
    resetAfterMs: msUntilFull(tokens, policy),
    retryAfterMs: allowed ? 0 : msUntilAffordable(tokens, policy, cost)
  }
}

export interface LimiterStores {
  readonly postgres: PostgresStore
  readonly redis: RedisCache
}

export class Limiter {
  readonly clock = new DbClock()
  readonly #stores: LimiterStores
  readonly #metrics: Metrics
  readonly #log: Logger

  constructor (stores: LimiterStores, metrics: Metrics, log: Logger) {
    this.#stores = stores
    this.#metrics = metrics
    this.#log = log
  }

  /** `log`: the request's logger, so the decision's log line carries its request id. */
  async check (policy: Policy, userId: string, cost: number, log: Logger = this.#log): Promise<Decision> {
    const started = process.hrtime.bigint()
    const { redis, postgres } = this.#stores
    const key = redis.key(policy.cacheName ?? policy.name, userId)
    const cached = await redis.read(key)
    let decision: Decision
    if (typeof cached === 'object' &&
        !canPay(tokensAt(cached, policy, this.clock.nowMs() + REDIS_DENY_MARGIN_MS), cost)) {
      decision = makeDecision(policy, cost, false, tokensAt(cached, policy, this.clock.nowMs()), 'redis')
    } else {
      let result
      try {
        result = await postgres.decide({ policy, userId, cost })
      } catch (err) {
        throw new StoreUnavailableError('PostgreSQL could not decide: ' + (err as Error).message, { cause: err })
      }
      this.clock.observe(result.snapshot.atMs)
      redis.write(key, result.snapshot, fullRefillSeconds(policy))
      const source: DecisionSource = typeof cached === 'object' ? 'redis' : result.created ? 'new-user' : 'postgres'
      decision = makeDecision(policy, cost, result.allowed, result.snapshot.tokens, source)
    }
    this.#record(decision, userId, started, log)
    return decision
  }

  #record (decision: Decision, userId: string, started: bigint, log: Logger): void {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    this.#metrics.decisionDuration.observe({ source: decision.source }, seconds)
    this.#metrics.decisions.inc({ result: decision.allowed ? 'allowed' : 'blocked', source: decision.source, policy: decision.policy.name })
    if (log.isLevelEnabled('debug')) {
      if (decision.allowed) {
        log.debug({ user_id: userId, remaining_tokens: Math.floor(decision.tokens), source: decision.source, policy: decision.policy.name }, 'rate limit allowed')
      } else {
        log.debug({ user_id: userId, source: decision.source, policy: decision.policy.name }, 'rate limit exceeded')
      }
    }
  }
}
