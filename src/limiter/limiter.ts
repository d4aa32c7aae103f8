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
import { HANDING_BACK, REDIS_OWNED, type BucketRequest } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { assemble, type LimiterParts } from './assemble.ts'
import type { DbClock } from './db-clock.ts'
import type { Mode } from './mode.ts'
import type { Deciding, LimiterOptions, LimiterPorts } from './options.ts'
import { recordDecision } from './record.ts'
import { snapshotDeny } from './steps/snapshot-deny.ts'

export type { Deciding, LimiterOptions, LimiterPorts } from './options.ts'

export class Limiter {
  readonly clock: DbClock
  readonly #p: LimiterParts
  readonly #metrics: Metrics
  readonly #log: Logger
  #fallback: Config['fallback']

  constructor (ports: LimiterPorts, options: LimiterOptions) {
    this.#metrics = options.metrics
    this.#log = options.log
    this.#fallback = options.fallback
    this.#p = assemble(ports, options, () => this.#fallback)
    this.clock = this.#p.clock
  }

  /** `log`: the request's logger, so the decision's log line carries its request id. */
  async check (policy: Policy, userId: string, cost: number, log: Logger = this.#log): Promise<Decision> {
    const started = process.hrtime.bigint()
    const request: BucketRequest = { policy, userId, cost }
    const p = this.#p
    const key = p.cache.key(policy.cacheName ?? policy.name, userId)
    const decision = p.overLimit?.refuse(key, request, p.clock.nowMs()) ?? await this.#decide(request, key)
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
    const keys = requests.map((r) => this.#p.cache.key(r.policy.cacheName ?? r.policy.name, userId))
    const verdict = makeVerdict(await this.#p.group.decide(requests, keys), userId)
    // One series per request, as for one policy: the most restrictive (on a refusal, a refusing) bucket.
    recordDecision(this.#metrics, verdict.primary, userId, started, log)
    return verdict
  }

  async #decide (request: BucketRequest, key: string): Promise<Decision> {
    const p = this.#p
    if (request.policy.consistency === 'write-behind' && p.decideWriteBehind !== null) return await p.decideWriteBehind(request, key)
    if (p.outage.down) return await p.withoutPostgres.decide(request, key)
    // Steps 2 and 3 at once unless the bucket was recently seen low (read-alongside.ts).
    const early = p.alongside?.start(request, key, p.clock.nowMs()) ?? null
    const read = await p.cache.read(key)
    const owned = read === REDIS_OWNED || read === HANDING_BACK
    if (early !== null && !owned) {
      try {
        return await p.alongside!.finish(early, request, key, read, p.clock.nowMs())
      } catch (err) {
        p.outage.failed(err)
        return await p.withoutPostgres.decide(request, key)
      }
    }
    const refused = snapshotDeny(read, request, p.clock.nowMs())
    // Refused by its snapshot, or owned by Redis: read this bucket first for a while.
    if (refused !== null || owned) p.alongside?.readFirst(key, p.clock.nowMs())
    if (refused !== null) {
      if (read.kind === 'snapshot') p.overLimit?.remember(key, read, request, p.clock.nowMs())
      return refused
    }
    if (owned) p.outage.redisOwnedSeen()
    // Owned, and PostgreSQL was asked alongside: if it charged the request, Redis decides it only
    // once that charge has landed (read-alongside.ts says why).
    const charged = early === null ? null : await p.alongside!.charged(early, (err) => p.outage.failed(err))
    if (charged !== null) return await p.withoutPostgres.afterCharge(request, key, read, charged)
    // Redis-owned: Redis decides. Handing back: PostgreSQL decides, waiting on the row lock for the merged state.
    const decided = read === REDIS_OWNED || p.outage.down ? null : await p.withoutPostgres.tryPostgres(request, key, read)
    return decided ?? await p.withoutPostgres.decide(request, key)
  }

  /** A policy refund after the upstream failed (refund.ts); off the response path, never throws. */
  async refund (verdict: Verdict, reason: 'upstream-error' | '5xx'): Promise<void> {
    await this.#p.refunds.refund(verdict, reason)
  }

  /** A bucket was raised (admin reset, override): forget what this process remembers of it. */
  forget (cacheName: string, userId: string): void {
    this.#p.overLimit?.forget(this.#p.cache.key(cacheName, userId))
    this.#p.writeBehindSync?.pending.forget(cacheName, userId)
  }

  /** Started while PostgreSQL does not answer: decide without it; `prepare` runs once it does. */
  startWithoutPostgres (prepare: () => Promise<void>, cause: unknown): void {
    this.#p.outage.startWithout(prepare, cause)
  }

  /** A reload changed the fallback section: the new fail mode and numbers apply from now. */
  reconfigure (fallback: Config['fallback']): void {
    this.#fallback = fallback
    this.#p.failMode.reconfigure(fallback)
  }

  /** This gateway found PostgreSQL unreachable and has not handed back yet. */
  get postgresDown (): boolean { return this.#p.outage.down }

  /** Who decided last: postgres, redis-fallback, or a fail mode. */
  get mode (): Mode { return this.#p.mode.current }

  /** Who decides requests while PostgreSQL does not answer (readiness reports it). */
  decidesWithoutPostgres (redisUp: boolean): Deciding {
    return this.#fallback.redisDecides && redisUp ? 'redis-fallback' : this.#p.failMode.deciding
  }

  /** Stops background work (PostgreSQL probes, hand-backs). */
  async close (): Promise<void> {
    await this.#p.outage.close()
  }
}
