/**
 * The decision flow (DESIGN.md): the only module that knows about both stores.
 *
 * 1. Read the caller's snapshot from Redis.
 * 2. A snapshot that, refilled to now, cannot pay the cost denies at once: consumption only
 *    lowers a bucket and refill is a fixed function of time, so a stale snapshot never shows
 *    fewer tokens than the truth, and a denial read from it is always right.
 * 3. Otherwise PostgreSQL decides atomically; every allowance is decided there.
 * 4. The resulting snapshot is written back to Redis, best effort, off the response path.
 *
 * When PostgreSQL cannot decide, or Redis owns the bucket because it decided it while
 * PostgreSQL was down, failover.ts takes over (Redis decides, else the fail mode).
 */
import { canPay, fullRefillSeconds, msUntilAffordable, msUntilFull, tokensAt } from '../core/token-bucket.ts'
import type { Config } from '../config/schema.ts'
import type { BucketSnapshot, Decision, DecisionSource, Policy } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { PostgresStore } from '../stores/postgres/postgres-store.ts'
import type { CacheMiss, NotOwnedByPostgres, RedisCache } from '../stores/redis/snapshot-cache.ts'
import { DbClock } from './db-clock.ts'
import { DenyCache } from './deny-cache.ts'
import { Failover } from './failover.ts'

export { StoreUnavailableError } from './fail-mode.ts'

/**
 * Redis denies only if the bucket could not pay even this much later than our estimate of
 * the database clock: an estimate that runs early must not deny a caller who has the tokens.
 * Anything closer is left to PostgreSQL, which is always right.
 */
const REDIS_DENY_MARGIN_MS = 2

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
  readonly failover: Failover
  readonly #stores: LimiterStores
  readonly #metrics: Metrics
  readonly #log: Logger
  /** The over-limit cache (deny-cache.ts), when configured. */
  readonly #local: DenyCache | null

  constructor (stores: LimiterStores, metrics: Metrics, log: Logger,
    config: Pick<Config, 'fallback' | 'redis'> & { readonly localDenyCache?: Config['localDenyCache'] }) {
    this.#stores = stores
    this.#metrics = metrics
    this.#log = log
    this.failover = new Failover({ ...stores, clock: this.clock, config, metrics, log })
    const local = config.localDenyCache
    this.#local = local?.enabled === true ? new DenyCache(local.maxEntries, REDIS_DENY_MARGIN_MS) : null
  }

  /** A bucket was raised (admin reset): forget what this process remembers of it. */
  forget (cacheName: string, userId: string): void {
    this.#local?.forget(this.#stores.redis.key(cacheName, userId))
  }

  /** `log`: the request's logger, so the decision's log line carries its request id. */
  async check (policy: Policy, userId: string, cost: number, log: Logger = this.#log): Promise<Decision> {
    const started = process.hrtime.bigint()
    const { redis, postgres } = this.#stores
    const key = redis.key(policy.cacheName ?? policy.name, userId)
    // Snapshots kept here are on the database clock (PostgreSQL's decisions and its cached
    // snapshots, never Redis's own while it decides), so they are projected with this.clock.
    const local = this.#local
    if (local !== null) {
      const tokens = local.refuse(key, policy, cost, this.clock.nowMs())
      if (tokens !== undefined) {
        const refused = makeDecision(policy, cost, false, tokens, 'local')
        this.#record(refused, userId, started, log)
        return refused
      }
    }
    const failover = this.failover
    let decision: Decision
    if (failover.postgresDown) {
      decision = await failover.decide(policy, userId, cost, () => this.#askPostgres(policy, userId, cost, key, 'miss'))
    } else {
      const cached = await redis.read(key)
      if (typeof cached === 'object' &&
          !canPay(tokensAt(cached, policy, this.clock.nowMs() + REDIS_DENY_MARGIN_MS), cost)) {
        decision = makeDecision(policy, cost, false, tokensAt(cached, policy, this.clock.nowMs()), 'redis')
        local?.remember(key, cached, policy, cost, this.clock.nowMs())
      } else if (cached === 'redis-owned') {
        failover.redisOwnedSeen()
        decision = await failover.decide(policy, userId, cost, () => this.#askPostgres(policy, userId, cost, key, 'miss'))
      } else {
        // 'handing-back': PostgreSQL decides, waiting on the row lock for the merged state.
        if (cached === 'handing-back') failover.redisOwnedSeen()
        try {
          decision = await this.#askPostgres(policy, userId, cost, key, cached)
        } catch {
          failover.postgresFailed()
          decision = await failover.decide(policy, userId, cost, () => this.#askPostgres(policy, userId, cost, key, 'miss'))
        }
      }
    }
    this.#record(decision, userId, started, log)
    return decision
  }

  /** Stops background work (PostgreSQL probes, hand-backs). */
  async close (): Promise<void> {
    await this.failover.close()
  }

  /** PostgreSQL decides; throws when it cannot. */
  async #askPostgres (policy: Policy, userId: string, cost: number, key: string,
    cached: BucketSnapshot | CacheMiss | NotOwnedByPostgres): Promise<Decision> {
    const result = await this.#stores.postgres.decide({ policy, userId, cost })
    this.clock.observe(result.snapshot.atMs)
    this.#stores.redis.write(key, result.snapshot, fullRefillSeconds(policy), result.allowed ? cost : 0)
    this.#local?.remember(key, result.snapshot, policy, cost, this.clock.nowMs())
    const source: DecisionSource = typeof cached === 'object' ? 'redis' : result.created ? 'new-user' : 'postgres'
    return makeDecision(policy, cost, result.allowed, result.snapshot.tokens, source)
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
