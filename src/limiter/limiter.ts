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
 * The limiter sees the stores only through the ports of src/core/ports.ts.
 */
import type { Config } from '../config/schema.ts'
import { makeDecision, makeVerdict } from '../core/decision.ts'
import type { Decision, Policy, Verdict } from '../core/domain.ts'
import { tokensAt } from '../core/token-bucket.ts'
import { CACHE_MISS, CACHE_SKIPPED, HANDING_BACK, REDIS_OWNED, type BucketRequest, type CacheRead, type DecidingStore, type RedisDecider, type SnapshotCache } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { DbClock } from './db-clock.ts'
import { DecidingMode, type Mode } from './mode.ts'
import { Outage } from './outage.ts'
import { recordDecision } from './record.ts'
import { AskPostgres } from './steps/deciding-store.ts'
import { FailMode, type FailModeDeciding } from './steps/fail-mode.ts'
import { OverLimitCache } from './steps/over-limit.ts'
import { RedisDecides } from './steps/redis-decides.ts'
import { DENY_MARGIN_MS, snapshotDeny } from './steps/snapshot-deny.ts'

export interface LimiterPorts {
  readonly store: DecidingStore
  readonly cache: SnapshotCache
  readonly redis: RedisDecider
}

export interface LimiterOptions {
  readonly fallback: Config['fallback']
  readonly localDenyCache?: Config['localDenyCache']
  readonly metrics: Metrics
  readonly log: Logger
  /**
   * This host's clock in milliseconds, for the database clock estimate and the local fail-mode
   * buckets (tests control time with it). Default: Date.now and performance.now.
   */
  readonly now?: () => number
}

export type Deciding = 'redis-fallback' | FailModeDeciding

export class Limiter {
  readonly clock: DbClock
  readonly #cache: SnapshotCache
  readonly #metrics: Metrics
  readonly #log: Logger
  readonly #mode: DecidingMode
  readonly #outage: Outage
  readonly #overLimit: OverLimitCache | null
  readonly #postgres: AskPostgres
  readonly #redisDecides: RedisDecides
  readonly #failMode: FailMode
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
    this.#postgres = new AskPostgres(ports.store, ports.cache, this.clock, this.#overLimit)
    this.#redisDecides = new RedisDecides(ports.redis, this.clock, metrics)
    this.#failMode = new FailMode(options.fallback, this.#mode, metrics, options.now)
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
    const verdict = makeVerdict(await this.#decideGroup(requests, keys), userId)
    // One series per request, as for one policy: the most restrictive (on a refusal, a refusing) bucket.
    recordDecision(this.#metrics, verdict.primary, userId, started, log)
    return verdict
  }

  async #decideGroup (requests: readonly BucketRequest[], keys: readonly string[]): Promise<Decision[]> {
    // 1. Over-limit cache: one remembered refusal refuses the request.
    if (this.#overLimit !== null) {
      const now = this.clock.nowMs()
      const local = requests.map((r, i) => this.#overLimit!.refuse(keys[i]!, r, now))
      if (local.some((d) => d !== null)) return await this.#refusedEarly(requests, keys, local, null)
    }
    if (!this.#outage.down) {
      // 2. Snapshot deny: the reads of one turn share one MGET; any snapshot that cannot pay refuses at once.
      const reads = await Promise.all(keys.map(async (k) => await this.#cache.read(k)))
      const now = this.clock.nowMs()
      const denied = requests.map((r, i) => snapshotDeny(reads[i]!, r, now))
      if (denied.some((d) => d !== null)) {
        denied.forEach((d, i) => { const read = reads[i]!; if (d !== null && read.kind === 'snapshot') this.#overLimit?.remember(keys[i]!, read, requests[i]!, now) })
        return await this.#refusedEarly(requests, keys, denied, reads)
      }
      if (reads.some((r) => r === REDIS_OWNED)) {
        // Redis decides one of them: Redis decides the request (below), bucket by bucket.
        this.#outage.redisOwnedSeen()
      } else {
        if (reads.some((r) => r === HANDING_BACK)) this.#outage.redisOwnedSeen()
        try {
          // 3. PostgreSQL decides all of them in one transaction (migrations/006).
          return await this.#postgres.decideGroup(requests, keys, reads)
        } catch (err) {
          this.#outage.failed(err)
        }
      }
    }
    return await this.#groupWithoutPostgres(requests, keys)
  }

  /**
   * Steps 4 and 5 for several buckets: each is decided by Redis (or the fail mode) in turn, and
   * the first refusal stops the request; the buckets already charged for it are given back by
   * the store that charged them (best effort: a refund that cannot be made errs towards fewer
   * tokens). Buckets not reached are reported from their cached snapshot, or as full.
   */
  async #groupWithoutPostgres (requests: readonly BucketRequest[], keys: readonly string[]): Promise<Decision[]> {
    const out: Array<Decision | null> = requests.map(() => null)
    for (let i = 0; i < requests.length; i++) {
      const d = await this.#withoutPostgres(requests[i]!, keys[i]!)
      out[i] = d
      if (!d.allowed) {
        const charged = out.slice(0, i) as Decision[]
        await Promise.all(charged.map(async (c, j) => {
          const done = await this.#giveBack(requests[j]!, c)
          this.#metrics.refunds.inc({ policy: c.policy.name, reason: 'group-refused', result: done ? 'refunded' : 'failed' })
        }))
        return await this.#refusedEarly(requests, keys, out, null, charged)
      }
    }
    return out as Decision[]
  }

  /**
   * A request refused before (or without) charging every bucket: the refusing buckets say so;
   * the others are reported as they stand (their cached snapshot, else full), uncharged.
   * `given`: decisions that were charged and have just been given back.
   */
  async #refusedEarly (requests: readonly BucketRequest[], keys: readonly string[], refused: ReadonlyArray<Decision | null>,
    reads: readonly CacheRead[] | null, given: readonly Decision[] = []): Promise<Decision[]> {
    const known = reads ?? (this.#outage.down ? requests.map(() => CACHE_SKIPPED) : await Promise.all(keys.map(async (k) => await this.#cache.read(k))))
    const now = this.clock.nowMs()
    return requests.map((r, i) => {
      const d = refused[i]
      if (d !== null && d !== undefined && !d.allowed) return d
      if (d !== null && d !== undefined) {
        const back = given.includes(d) ? Math.min(r.policy.capacity, d.tokens + r.cost) : d.tokens
        return makeDecision(r.policy, r.cost, true, back, d.source, d.decidedBy)
      }
      const read = known[i]!
      const tokens = read.kind === 'snapshot' ? tokensAt(read, r.policy, now) : r.policy.capacity
      return makeDecision(r.policy, r.cost, true, tokens, read.kind === 'snapshot' ? 'redis' : 'postgres', read.kind === 'snapshot' ? 'redis' : 'postgres')
    })
  }

  /**
   * A policy refund (the upstream failed): the buckets of an allowed request whose policy says
   * so get their cost back, each from the store that charged it, never above capacity. Counted
   * in gateway_refunds_total; off the response path (never throws).
   */
  async refund (verdict: Verdict, reason: 'upstream-error' | '5xx'): Promise<void> {
    if (!verdict.allowed) return
    const due = verdict.decisions.filter((d) => d.source !== 'fail-open' && (reason === '5xx' ? d.policy.refund5xx : d.policy.refundUpstreamError) === true)
    if (due.length === 0) return
    const requests = due.map((d) => ({ policy: d.policy, userId: verdict.userId, cost: d.cost }))
    const results = new Array<boolean>(due.length).fill(false)
    // PostgreSQL's in one round trip; the others (Redis, this gateway's share) one by one.
    const pg = due.map((d, i) => d.decidedBy === 'postgres' ? i : -1).filter((i) => i >= 0)
    if (pg.length > 0) {
      try {
        await this.#postgres.refund(pg.map((i) => requests[i]!), pg.map((i) => this.#cache.key(requests[i]!.policy.cacheName ?? requests[i]!.policy.name, verdict.userId)))
        for (const i of pg) results[i] = true
      } catch (err) {
        this.#log.warn({ err, user_id: verdict.userId }, 'refund failed: PostgreSQL did not take the tokens back')
      }
    }
    await Promise.all(due.map(async (d, i) => { if (d.decidedBy !== 'postgres') results[i] = await this.#giveBack(requests[i]!, d) }))
    due.forEach((d, i) => this.#metrics.refunds.inc({ policy: d.policy.name, reason, result: results[i] ? 'refunded' : 'failed' }))
  }

  /** Gives a charged bucket's tokens back to the store that charged it (never above capacity). */
  async #giveBack (request: BucketRequest, charged: Decision): Promise<boolean> {
    switch (charged.decidedBy) {
      case 'redis': return await this.#redisDecides.refund(request)
      case 'gateway': return charged.source === 'local-fallback' && this.#failMode.refund(request)
      case 'postgres':
        try {
          await this.#postgres.refund([request], [this.#cache.key(request.policy.cacheName ?? request.policy.name, request.userId)])
          return true
        } catch {
          return false
        }
    }
  }

  async #decide (request: BucketRequest, key: string): Promise<Decision> {
    if (!this.#outage.down) {
      const read = await this.#cache.read(key)
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

  async #tryPostgres (request: BucketRequest, key: string): Promise<Decision | null> {
    try {
      return await this.#postgres.decide(request, key, CACHE_MISS)
    } catch (err) {
      this.#outage.failed(err)
      return null
    }
  }

  /** A bucket was raised (admin reset, override): forget what this process remembers of it. */
  forget (cacheName: string, userId: string): void {
    this.#overLimit?.forget(this.#cache.key(cacheName, userId))
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
