/**
 * The decision flow, in order (docs/design.md, "The decision flow"). Each step is one module
 * in steps/; this file only orders them:
 *
 *   1. over-limit cache   a caller just seen over its limit is refused from memory
 *   2. snapshot deny      a cached snapshot that cannot pay refuses (it never under-reports)
 *   3. deciding store     PostgreSQL decides every allowance, atomically
 *   4. Redis decides      while PostgreSQL is down, or Redis owns the bucket
 *   5. fail mode          neither store answers: local shares, open or closed
 *
 * A write-behind policy goes to steps/redis-write-behind.ts instead: Redis decides every
 * request; while Redis cannot, PostgreSQL decides strictly (3, then 4 and 5).
 *
 * The limiter sees the stores only through the ports of src/core/ports.ts.
 */
import type { Config } from '../config/schema.ts'
import { makeVerdict } from '../core/decision.ts'
import type { Decision, Policy, Verdict } from '../core/domain.ts'
import { CACHE_MISS, CACHE_SKIPPED, HANDING_BACK, REDIS_OWNED, type BucketRequest, type SnapshotCache } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { DbClock } from './db-clock.ts'
import { DecidingMode, type Mode } from './mode.ts'
import { GroupFlow } from './group.ts'
import { Outage } from './outage.ts'
import { Refunds } from './refund.ts'
import { recordDecision } from './record.ts'
import { AskPostgres } from './steps/deciding-store.ts'
import { FailMode } from './steps/fail-mode.ts'
import { OverLimitCache } from './steps/over-limit.ts'
import { ReadAlongside } from './steps/read-alongside.ts'
import { RecentlyPlenty } from './steps/recently-plenty.ts'
import { RedisDecides } from './steps/redis-decides.ts'
import { WriteBehindStep } from './steps/redis-write-behind.ts'
import type { WriteBehindSync } from './write-behind.ts'
import { DENY_MARGIN_MS, snapshotDeny } from './steps/snapshot-deny.ts'

import type { Deciding, LimiterOptions, LimiterPorts } from './options.ts'
export type { Deciding, LimiterOptions, LimiterPorts } from './options.ts'

export class Limiter {
  readonly clock: DbClock
  readonly #cache: SnapshotCache
  readonly #metrics: Metrics
  readonly #log: Logger
  readonly #mode: DecidingMode
  readonly #outage: Outage
  readonly #overLimit: OverLimitCache | null
  readonly #postgres: AskPostgres
  readonly #alongside: ReadAlongside | null
  readonly #redisDecides: RedisDecides
  readonly #failMode: FailMode
  readonly #group: GroupFlow
  readonly #refunds: Refunds
  readonly #writeBehind: WriteBehindStep | null
  readonly #writeBehindSync: WriteBehindSync | undefined
  #fallback: Config['fallback']

  constructor (ports: LimiterPorts, options: LimiterOptions) {
    const { metrics, log } = options
    this.#cache = ports.cache
    this.#metrics = metrics
    this.#log = log
    this.#fallback = options.fallback
    this.clock = new DbClock(undefined, options.now)
    this.#mode = new DecidingMode(metrics, log)
    this.#outage = new Outage({ store: ports.store, redis: ports.redis, mode: this.#mode, fallback: () => this.#fallback, metrics, log })
    const local = options.localDenyCache
    this.#overLimit = local?.enabled === true ? new OverLimitCache(local.maxEntries, DENY_MARGIN_MS) : null
    const plenty = options.readAlongside === false ? null : new RecentlyPlenty(this.clock.nowMs())
    this.#postgres = new AskPostgres(ports.store, ports.cache, this.clock, this.#overLimit, plenty)
    this.#alongside = plenty === null ? null : new ReadAlongside(this.#postgres, plenty)
    this.#redisDecides = new RedisDecides(ports.redis, this.clock, metrics)
    this.#failMode = new FailMode(options.fallback, this.#mode, metrics, options.now)
    const wb = ports.writeBehind
    this.#writeBehindSync = wb?.sync
    this.#writeBehind = wb === undefined
      ? null
      : new WriteBehindStep({ ...wb, outage: this.#outage, log, retryMs: () => this.#fallback.probeIntervalMs, ...(options.now === undefined ? {} : { now: options.now }) })
    this.#refunds = new Refunds({ cache: ports.cache, postgres: this.#postgres, redisDecides: this.#redisDecides, failMode: this.#failMode, metrics, log })
    this.#group = new GroupFlow({
      cache: ports.cache, clock: this.clock, outage: this.#outage, overLimit: this.#overLimit, postgres: this.#postgres, metrics,
      withoutPostgres: async (request, key) => await this.#withoutPostgres(request, key),
      giveBack: async (request, charged) => await this.#refunds.giveBack(request, charged)
    })
  }

  /** `log`: the request's logger, so the decision's log line carries its request id. */
  async check (policy: Policy, userId: string, cost: number, log: Logger = this.#log): Promise<Decision> {
    const started = process.hrtime.bigint()
    const request: BucketRequest = { policy, userId, cost }
    const key = this.#cache.key(policy.cacheName ?? policy.name, userId)
    const decision = this.#overLimit?.refuse(key, request, this.clock.nowMs()) ?? await this.#decide(request, key)
    recordDecision(this.#metrics, decision, userId, started, log)
    return decision
  }

  /**
   * Several buckets for one request (a plan's burst, hourly and monthly limits), all or
   * nothing: allowed only if every bucket can pay; when any refuses, none is charged.
   * docs/policies.md, "Several policies on one request", says where each step decides.
   */
  async checkAll (requests: readonly BucketRequest[], userId: string, log: Logger = this.#log): Promise<Verdict> {
    if (requests.length === 1) {
      const only = requests[0]!
      return makeVerdict([await this.check(only.policy, userId, only.cost, log)], userId)
    }
    const started = process.hrtime.bigint()
    const keys = requests.map((r) => this.#cache.key(r.policy.cacheName ?? r.policy.name, userId))
    const verdict = makeVerdict(await this.#group.decide(requests, keys), userId)
    // One series per request, as for one policy: the most restrictive (on a refusal, a refusing) bucket.
    recordDecision(this.#metrics, verdict.primary, userId, started, log)
    return verdict
  }

  async #decide (request: BucketRequest, key: string): Promise<Decision> {
    if (request.policy.consistency === 'write-behind' && this.#writeBehind !== null) return await this.#decideWriteBehind(request, key)
    if (!this.#outage.down) {
      // Steps 2 and 3 at once for a bucket recently seen with plenty of tokens (read-alongside.ts).
      const alongside = this.#alongside
      const early = alongside === null ? null : alongside.start(request, key, this.clock.nowMs())
      const read = await this.#cache.read(key)
      if (early !== null) {
        if (read !== REDIS_OWNED && read !== HANDING_BACK) {
          try {
            return await alongside!.finish(early, request, key, read, this.clock.nowMs())
          } catch (err) {
            this.#outage.failed(err)
            return await this.#withoutPostgres(request, key)
          }
        }
        alongside!.discard(key)
      }
      const refused = snapshotDeny(read, request, this.clock.nowMs())
      if (refused !== null) {
        if (read.kind === 'snapshot') this.#overLimit?.remember(key, read, request, this.clock.nowMs())
        return refused
      }
      if (read === REDIS_OWNED) {
        this.#outage.redisOwnedSeen()
      } else {
        // Handing back: PostgreSQL decides, waiting on the row lock for the merged state.
        if (read === HANDING_BACK) this.#outage.redisOwnedSeen()
        try {
          return await this.#postgres.decide(request, key, read)
        } catch (err) {
          this.#outage.failed(err)
        }
      }
    }
    return await this.#withoutPostgres(request, key)
  }

  /** Redis decides; where it cannot, PostgreSQL strictly (its state reaches Redis before Redis decides again), else steps 4-5. */
  async #decideWriteBehind (request: BucketRequest, key: string): Promise<Decision> {
    const wb = this.#writeBehind!
    const decided = await wb.decide(request)
    if (decided !== null) return decided
    const strict = (this.#outage.down ? null : await this.#tryPostgres(request, key, CACHE_SKIPPED)) ?? await this.#withoutPostgres(request, key)
    if (strict.decidedBy === 'postgres') wb.decidedWithoutRedis(request)
    return strict
  }

  /** A policy refund after the upstream failed (refund.ts); off the response path, never throws. */
  async refund (verdict: Verdict, reason: 'upstream-error' | '5xx'): Promise<void> {
    await this.#refunds.refund(verdict, reason)
  }

  /** Steps 4 and 5: Redis decides; where it cannot, PostgreSQL if it is up, else the fail mode. */
  async #withoutPostgres (request: BucketRequest, key: string): Promise<Decision> {
    if (this.#fallback.redisDecides) {
      // What PostgreSQL last decided here must reach Redis before Redis takes the bucket over.
      await this.#cache.settled()
      let outcome = await this.#redisDecides.decide(request, false)
      if (outcome === 'handing-back') {
        // Another gateway is merging this bucket into PostgreSQL: PostgreSQL answers once the
        // merge is done. If PostgreSQL is down (or fails us now), Redis takes the bucket back.
        const decided = this.#outage.down ? null : await this.#tryPostgres(request, key)
        outcome = decided ?? await this.#redisDecides.decide(request, true)
      }
      if (outcome !== null && outcome !== 'handing-back') {
        if (this.#outage.down) this.#mode.enter('redis-fallback', { err: this.#outage.cause })
        return outcome
      }
    }
    // Redis owns this bucket but cannot be reached: PostgreSQL is the best judge left.
    const decided = this.#outage.down ? null : await this.#tryPostgres(request, key)
    return decided ?? this.#failMode.decide(request, this.#outage.cause)
  }

  async #tryPostgres (request: BucketRequest, key: string, read = CACHE_MISS): Promise<Decision | null> {
    try {
      return await this.#postgres.decide(request, key, read)
    } catch (err) {
      this.#outage.failed(err)
      return null
    }
  }

  /** A bucket was raised (admin reset, override): forget what this process remembers of it. */
  forget (cacheName: string, userId: string): void {
    this.#overLimit?.forget(this.#cache.key(cacheName, userId))
    this.#writeBehindSync?.pending.forget(cacheName, userId)
  }

  /** Started while PostgreSQL does not answer: decide without it; `prepare` runs once it does. */
  startWithoutPostgres (prepare: () => Promise<void>, cause: unknown): void {
    this.#outage.startWithout(prepare, cause)
  }

  /** A reload changed the fallback section: the new fail mode and numbers apply from now. */
  reconfigure (fallback: Config['fallback']): void {
    this.#fallback = fallback
    this.#failMode.reconfigure(fallback)
  }

  /** This gateway found PostgreSQL unreachable and has not handed back yet. */
  get postgresDown (): boolean { return this.#outage.down }

  /** Who decided last: postgres, redis-fallback, or a fail mode. */
  get mode (): Mode { return this.#mode.current }

  /** Who decides requests while PostgreSQL does not answer (readiness reports it). */
  decidesWithoutPostgres (redisUp: boolean): Deciding {
    return this.#fallback.redisDecides && redisUp ? 'redis-fallback' : this.#failMode.deciding
  }

  /** Stops background work (PostgreSQL probes, hand-backs). */
  async close (): Promise<void> {
    await this.#outage.close()
  }
}
