/**
 * PostgreSQL as this gateway sees it: up, or down since a decision failed. While it is down it
 * is probed every `probeIntervalMs`; once it answers, the buckets Redis decided meanwhile are
 * handed back (hand-back.ts) and PostgreSQL decides again. A Redis-owned bucket met while
 * PostgreSQL works (another gateway saw the outage) also starts a hand-back.
 */
import type { Config } from '../config/schema.ts'
import type { DecidingStore, RedisDecider } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { handBack } from './hand-back.ts'
import type { DecidingMode } from './mode.ts'

export interface OutageDeps {
  readonly store: DecidingStore
  readonly redis: RedisDecider
  readonly mode: DecidingMode
  /** The live fallback settings (a reload may change them). */
  readonly fallback: () => Config['fallback']
  readonly metrics: Metrics
  readonly log: Logger
}

export class Outage {
  readonly #deps: OutageDeps
  #down = false
  /** The store error that started the outage, for the logs and the closed mode's 503. */
  #cause: unknown
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #closed = false
  /** What must succeed once PostgreSQL answers before it decides (a start without it). */
  #prepare: (() => Promise<void>) | null = null

  constructor (deps: OutageDeps) {
    this.#deps = deps
  }

  /** This gateway found PostgreSQL unreachable and has not handed back yet. */
  get down (): boolean { return this.#down }

  get cause (): unknown { return this.#cause }

  /** A PostgreSQL decision failed: stop asking it, and probe it until it answers. */
  failed (err: unknown): void {
    if (this.#down || this.#closed) return
    this.#down = true
    this.#cause = err
    this.#schedule()
  }

  /** Started while PostgreSQL did not answer: `prepare` (migrations, LISTEN) runs once it does, before the hand-back. */
  startWithout (prepare: () => Promise<void>, cause: unknown): void {
    this.#prepare = prepare
    this.failed(cause)
  }

  /** A Redis-owned bucket was met while PostgreSQL works: make sure a hand-back runs soon. */
  redisOwnedSeen (): void {
    if (this.#timer === undefined && this.#running === undefined && !this.#closed) this.#schedule(0)
  }

  /** Waits for a hand-back in progress and stops probing. */
  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#running
  }

  #schedule (delayMs = this.#deps.fallback().probeIntervalMs): void {
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
    const { store, redis, log, metrics } = this.#deps
    try {
      await store.ping()
    } catch {
      await this.#countOwned()
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
    if (!redis.enabled || !this.#deps.fallback().redisDecides) {
      this.#backToPostgres({})
      return
    }
    let result
    try {
      result = await handBack(store, redis)
    } catch (err) {
      if (!redis.available) {
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
    if (result.handedBack > 0) {
      metrics.handedBack.inc(result.handedBack)
      if (log.isLevelEnabled('debug')) log.debug({ buckets: result.handedBack }, 'buckets handed back to PostgreSQL')
    }
    metrics.redisOwned.set(result.remaining)
    this.#backToPostgres({ handed_back: result.handedBack, still_redis_owned: result.remaining })
    if (result.remaining > 0) this.#schedule()
  }

  /** While PostgreSQL is down: how many buckets Redis owns now (the gauge; never throws). */
  async #countOwned (): Promise<void> {
    const { redis, metrics } = this.#deps
    if (!redis.available) return
    try {
      metrics.redisOwned.set(await redis.ownedCount())
    } catch {
      // Redis failing too: the fail mode's own signals say so.
    }
  }

  #backToPostgres (context: Record<string, unknown>): void {
    this.#down = false
    this.#cause = undefined
    this.#deps.mode.enter('postgres', context)
  }
}
