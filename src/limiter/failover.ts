/**
 * Deciding without PostgreSQL (docs/reliability.md).
 *
 * When a PostgreSQL decision fails, this gateway stops asking PostgreSQL and lets Redis decide
 * every request with an atomic Lua script on the Redis clock; the buckets it decides become
 * Redis-owned (the owner is written in the bucket's value, see src/stores/redis-scripts.ts).
 * PostgreSQL is probed every `probeIntervalMs`; once it answers, the Redis-owned buckets are
 * handed back (merged, keeping the lower token count) and PostgreSQL decides again. Any gateway
 * that reads a Redis-owned bucket lets Redis decide it until it has been handed back, so no
 * bucket is ever decided by both stores at once, however many gateways there are and whichever
 * of them recovers first.
 *
 * When Redis cannot decide either, the configured fail mode applies (fail-mode.ts).
 */
import type { Config } from '../config/schema.ts'
import type { Decision, Policy } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { msUntilAffordable, msUntilFull } from '../core/token-bucket.ts'
import type { PostgresStore } from '../stores/postgres/postgres-store.ts'
import type { RedisCache } from '../stores/redis/snapshot-cache.ts'
import { RedisFallback } from '../stores/redis/redis-decider.ts'
import { WriteBack } from './hand-back.ts'
import type { DbClock } from './db-clock.ts'
import { FailMode } from './fail-mode.ts'

export interface FailoverDeps {
  readonly postgres: PostgresStore
  readonly redis: RedisCache
  readonly clock: DbClock
  readonly config: Pick<Config, 'fallback' | 'redis'>
  readonly metrics: Metrics
  readonly log: Logger
}

/** A PostgreSQL decision for one request; throws when PostgreSQL fails. */
export type AskPostgres = () => Promise<Decision>

export class Failover {
  readonly failMode: FailMode
  readonly redisFallback: RedisFallback
  readonly #deps: FailoverDeps
  readonly #writeBack: WriteBack
  #postgresDown = false
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #closed = false
  /** What must succeed once PostgreSQL answers before it decides (a start without it). */
  #prepare: (() => Promise<void>) | null = null

  constructor (deps: FailoverDeps) {
    this.#deps = deps
    this.failMode = new FailMode(deps.config.fallback, deps.metrics, deps.log)
    this.redisFallback = new RedisFallback(deps.redis, deps.config.redis, deps.config.fallback.redisTimeoutMs, deps.metrics)
    if (deps.config.fallback.redisDecides) this.redisFallback.start()
    this.#writeBack = new WriteBack(deps.postgres.sql, this.redisFallback, deps.metrics, deps.log)
  }

  /** This gateway found PostgreSQL unreachable and has not handed back yet. */
  get postgresDown (): boolean { return this.#postgresDown }

  /** A PostgreSQL decision failed: stop asking it, and probe it until it answers. */
  postgresFailed (): void {
    if (this.#postgresDown || this.#closed) return
    this.#postgresDown = true
    this.#schedule()
  }

  /**
   * The gateway started while PostgreSQL did not answer: decide without it from the first
   * request, and run `prepare` (migrations, the overrides' LISTEN) once it answers, before the
   * hand-back.
   */
  startWithoutPostgres (prepare: () => Promise<void>): void {
    this.#prepare = prepare
    this.postgresFailed()
  }

  /** A Redis-owned bucket was met while PostgreSQL works: make sure a hand-back runs soon. */
  redisOwnedSeen (): void {
    if (this.#timer === undefined && this.#running === undefined && !this.#closed) this.#schedule(0)
  }

  /**
   * Decides without PostgreSQL's help: Redis decides (creating or continuing a Redis-owned
   * bucket); if Redis cannot, PostgreSQL when it is up, else the fail mode.
   * `askPostgres` is used for a bucket being handed back right now.
   */
  async decide (policy: Policy, userId: string, cost: number, askPostgres: AskPostgres): Promise<Decision> {
    const { config: { fallback: config }, clock } = this.#deps
    if (config.redisDecides) {
      let outcome = await this.redisFallback.decide(policy, userId, cost, clock.nowMs(), false)
      if (outcome === 'handing-back') {
        // Another gateway is merging this bucket into PostgreSQL, holding its row: PostgreSQL
        // answers once the merge is done. If PostgreSQL fails us, Redis takes the bucket back.
        try {
          return await askPostgres()
        } catch {
          this.postgresFailed()
          outcome = await this.redisFallback.decide(policy, userId, cost, clock.nowMs(), true)
        }
      }
      if (outcome !== 'unavailable' && outcome !== 'handing-back') {
        if (this.#postgresDown) this.failMode.enter('redis-fallback')
        this.#deps.metrics.failModeEvents.inc({ mode: 'redis-fallback' })
        const { allowed, tokens } = outcome
        return {
          allowed,
          policy,
          cost,
          tokens,
          resetAfterMs: msUntilFull(tokens, policy),
          retryAfterMs: allowed ? 0 : msUntilAffordable(tokens, policy, cost),
          source: 'redis-fallback'
        }
      }
    }
    if (!this.#postgresDown) {
      // Redis owns this bucket but cannot be reached: PostgreSQL is the best judge left.
      try {
        return await askPostgres()
      } catch {
        this.postgresFailed()
      }
    }
    return this.failMode.decide(policy, userId, cost, undefined)
  }

  /** Who `decide` hands requests to while PostgreSQL does not answer (readiness reports it). */
  decidesWithoutPostgres (redisUp: boolean): 'redis-fallback' | 'local-fallback' | 'fail-open' | 'none' {
    const config = this.#deps.config.fallback
    if (config.redisDecides && redisUp) return 'redis-fallback'
    return config.mode === 'local' ? 'local-fallback' : config.mode === 'open' ? 'fail-open' : 'none'
  }

  /** Waits for a hand-back in progress and stops probing. */
  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#running
    await this.redisFallback.close()
  }

  #schedule (delayMs = this.#deps.config.fallback.probeIntervalMs): void {
    if (this.#closed || this.#timer !== undefined) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.#running = this.#recover().finally(() => { this.#running = undefined })
    }, delayMs)
    this.#timer.unref()
  }

  /**
   * One recovery attempt: is PostgreSQL back? Then hand the Redis-owned buckets back and let
   * PostgreSQL decide again. Repeats while PostgreSQL is down or buckets remain Redis-owned
   * (other gateways may still be deciding in Redis).
   */
  async #recover (): Promise<void> {
    const { postgres, redis, log } = this.#deps
    try {
      await postgres.ping()
    } catch {
      this.#schedule()
      return
    }
    if (this.#prepare !== null) {
      try {
        await this.#prepare()
        this.#prepare = null
      } catch (err) {
        log.warn({ err }, 'PostgreSQL answers but could not be prepared (migrations); retrying')
        this.#schedule()
        return
      }
    }
    if (redis.client === null || !this.#deps.config.fallback.redisDecides) {
      this.#backToPostgres({})
      return
    }
    let result
    try {
      result = await this.#writeBack.run()
    } catch (err) {
      if (redis.client.status !== 'ready') {
        // Redis is gone too: what it decided cannot be read now. PostgreSQL decides; the
        // Redis-owned buckets are handed back when a gateway meets one after Redis returns.
        log.warn({ err }, 'PostgreSQL is back but Redis is not: buckets Redis decided will be handed back when it returns')
        this.#backToPostgres({})
      } else {
        log.warn({ err }, 'handing buckets back to PostgreSQL failed; retrying')
        this.#schedule()
      }
      return
    }
    this.#backToPostgres({ handed_back: result.handedBack, still_redis_owned: result.remaining })
    if (result.remaining > 0) this.#schedule()
  }

  #backToPostgres (context: Record<string, unknown>): void {
    if (this.#postgresDown) {
      this.#postgresDown = false
      this.failMode.enter('postgres', context)
    } else if (this.failMode.mode !== 'postgres') {
      this.failMode.enter('postgres', context)
    }
  }
}
