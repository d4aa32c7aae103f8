/**
 * Write-behind mode (a policy's `consistency: write-behind`): Redis decides every request with
 * one atomic script on its clock, one round trip; PostgreSQL is written behind (write-behind.ts).
 *
 * - A bucket Redis does not hold is loaded from PostgreSQL (the loads of one turn share one
 *   SELECT), seeded into Redis only if still absent, then decided: `new-user` (no row),
 *   `postgres` (the row's state), `redis` (Redis held it, or another gateway seeded it first).
 * - PostgreSQL down: the request path does not change; a bucket Redis misses is seeded full,
 *   as the strict fallback does ("Where the bound is weaker").
 * - Redis unable to decide: `null`, and the limiter lets PostgreSQL decide strictly. Before the
 *   first such decision this gateway flushes what it holds, so PostgreSQL starts from its latest
 *   Redis states. Every bucket PostgreSQL decides meanwhile is remembered; once Redis answers
 *   again, their PostgreSQL states are pushed into Redis with a min-merge (WB_LOWER) before
 *   Redis decides here again, so the switch back refunds nothing PostgreSQL spent.
 */
import { makeDecision } from '../../core/decision.ts'
import type { Decision, DecisionSource } from '../../core/domain.ts'
import type { BucketLedger, BucketRequest, WriteBehindRedis, WriteBehindVerdict } from '../../core/ports.ts'
import type { Logger } from '../../observability/log.ts'
import type { Outage } from '../outage.ts'
import type { WriteBehindSync } from '../write-behind.ts'

/** Most passes of the switch back before it gives up for a probe interval (PostgreSQL keeps deciding meanwhile). */
const MAX_PASSES = 5

export interface WriteBehindDeps {
  readonly redis: WriteBehindRedis
  readonly ledger: BucketLedger
  readonly sync: WriteBehindSync
  readonly outage: Outage
  readonly log: Logger
  /** How long to wait between attempts to switch back to Redis. */
  readonly retryMs: () => number
  readonly now?: () => number
}

export class WriteBehindStep {
  readonly #d: WriteBehindDeps
  readonly #now: () => number
  /** Redis could not decide: PostgreSQL decides this gateway's write-behind buckets. */
  #away = false
  /** The flush made on leaving Redis: PostgreSQL's first strict decisions wait for it. */
  #left: Promise<unknown> = Promise.resolve()
  /** The buckets PostgreSQL decided while Redis was away, by row (pushed into Redis before it decides again). */
  #decidedWithout = new Map<string, BucketRequest>()
  #returning: Promise<void> | undefined
  #nextReturnMs = 0

  constructor (deps: WriteBehindDeps) {
    this.#d = deps
    this.#now = deps.now ?? (() => performance.now())
  }

  /** Redis is away for this gateway (PostgreSQL decides its write-behind buckets). */
  get away (): boolean { return this.#away }

  /** Redis's decision, or null: Redis cannot decide, PostgreSQL must (strictly). */
  async decide (request: BucketRequest): Promise<Decision | null> {
    if (this.#away) {
      this.#tryReturn()
      if (this.#away) {
        await this.#left
        return null
      }
    }
    const { redis, ledger, outage } = this.#d
    let verdict: WriteBehindVerdict = await redis.decide(request)
    let source: DecisionSource = 'redis'
    if (verdict.kind === 'miss') {
      let tokens: number | null = null
      let loaded = false
      if (!outage.down) {
        try {
          tokens = await ledger.load(request)
          loaded = true
        } catch (err) {
          outage.failed(err)
        }
      }
      verdict = await redis.seedAndDecide(request, tokens ?? request.policy.capacity)
      if (verdict.kind === 'decided' && verdict.seeded && loaded) source = tokens === null ? 'new-user' : 'postgres'
    }
    if (verdict.kind !== 'decided') {
      this.#leave()
      await this.#left
      return null
    }
    this.#d.sync.record(request.policy, request.userId, verdict.tokens, verdict.atMs)
    return makeDecision(request.policy, request.cost, verdict.allowed, verdict.tokens, source, 'redis')
  }

  /**
   * Several write-behind buckets of one request in one atomic call, all or nothing: every
   * decision allowed and charged, or none charged (the ones that could pay are reported allowed,
   * as they stand). A miss loads the missing buckets and calls again with their seeds. Null:
   * decide them one by one (a Cluster; Redis away or failing, where `decide` leads to PostgreSQL;
   * a bucket gone between the two calls).
   */
  async decideGroup (requests: readonly BucketRequest[]): Promise<Decision[] | null> {
    if (this.#away) return null
    const { redis, ledger, outage } = this.#d
    let verdict = await redis.decideGroup(requests, requests.map(() => null))
    let loaded: readonly boolean[] = []
    let rows: Array<number | null> = []
    if (verdict?.kind === 'miss') {
      const { missing } = verdict
      if (!outage.down) {
        try {
          rows = await Promise.all(requests.map(async (r, i) => missing[i] === true ? await ledger.load(r) : null))
          loaded = missing
        } catch (err) {
          outage.failed(err)
        }
      }
      verdict = await redis.decideGroup(requests, requests.map((r, i) => missing[i] === true ? rows[i] ?? r.policy.capacity : null))
    }
    if (verdict === null) return null
    if (verdict.kind !== 'decided') {
      if (verdict.kind === 'unavailable') this.#leave()
      return null
    }
    const { charged } = verdict
    return verdict.buckets.map((v, i) => {
      const request = requests[i]!
      // A refused group wrote only its seeds: the other buckets have nothing new to write behind.
      if (charged || v.seeded) this.#d.sync.record(request.policy, request.userId, v.tokens, v.atMs)
      const source: DecisionSource = v.seeded && loaded[i] === true ? (rows[i] === null ? 'new-user' : 'postgres') : 'redis'
      return makeDecision(request.policy, request.cost, v.allowed, v.tokens, source, 'redis')
    })
  }

  /**
   * Gives a bucket Redis charged its cost back (refund.ts), never above capacity; the new state
   * is written behind like any other. False when Redis no longer holds it (nothing given back).
   */
  async refund (request: BucketRequest): Promise<boolean> {
    const back = await this.#d.redis.refund(request)
    if (back === null) return false
    this.#d.sync.record(request.policy, request.userId, back.tokens, back.atMs)
    return true
  }

  /** PostgreSQL decided this bucket because Redis could not: Redis must learn it before deciding it again. */
  decidedWithoutRedis (request: BucketRequest): void {
    if (this.#away) {
      this.#decidedWithout.set(request.policy.name + '\n' + request.userId, request)
      return
    }
    // Redis came back while this decision was on its way: push it now, off the response path.
    void this.#pushToRedis([request]).catch(() => {})
  }

  #leave (): void {
    if (this.#away) return
    this.#away = true
    this.#nextReturnMs = this.#now() + this.#d.retryMs()
    this.#d.log.error('Redis cannot decide: PostgreSQL decides the write-behind buckets (strictly) until it answers again')
    // What this gateway decided in Redis reaches PostgreSQL first (at most the statement
    // timeout); PostgreSQL known down: nothing to wait for, the fail mode decides.
    this.#left = this.#d.outage.down ? Promise.resolve() : this.#d.sync.flush()
  }

  #tryReturn (): void {
    if (this.#returning !== undefined || !this.#d.redis.available || this.#now() < this.#nextReturnMs) return
    this.#returning = this.#return().finally(() => { this.#returning = undefined })
  }

  /** Pushes PostgreSQL's state of every bucket it decided meanwhile into Redis, then lets Redis decide again. */
  async #return (): Promise<void> {
    try {
      for (let pass = 0; pass < MAX_PASSES; pass++) {
        if (this.#decidedWithout.size === 0) {
          this.#away = false
          this.#d.log.warn('Redis decides the write-behind buckets again')
          return
        }
        const requests = [...this.#decidedWithout.values()]
        this.#decidedWithout = new Map()
        try {
          await this.#pushToRedis(requests)
        } catch (err) {
          for (const r of requests) this.#decidedWithout.set(r.policy.name + '\n' + r.userId, r)
          throw err
        }
      }
    } catch (err) {
      this.#d.log.warn({ err }, 'Redis answers but PostgreSQL\'s state could not be pushed into it yet; PostgreSQL keeps deciding')
    }
    this.#nextReturnMs = this.#now() + this.#d.retryMs()
  }

  async #pushToRedis (requests: readonly BucketRequest[]): Promise<void> {
    const tokens = await Promise.all(requests.map(async (r) => await this.#d.ledger.load(r)))
    await this.#d.redis.lower(requests, tokens)
  }
}
