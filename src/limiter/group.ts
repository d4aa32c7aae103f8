/**
 * Several buckets for one request (a plan's burst, hourly and monthly limits), all or nothing:
 * the limiter's steps (limiter.ts) applied to a group. docs/policies.md, "Several policies on
 * one request", says where each step decides.
 */
import { makeDecision } from '../core/decision.ts'
import type { Decision } from '../core/domain.ts'
import { CACHE_SKIPPED, HANDING_BACK, REDIS_OWNED, type BucketRequest, type CacheRead, type SnapshotCache } from '../core/ports.ts'
import { tokensAt } from '../core/token-bucket.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { DbClock } from './db-clock.ts'
import type { Outage } from './outage.ts'
import type { AskPostgres } from './steps/deciding-store.ts'
import type { OverLimitCache } from './steps/over-limit.ts'
import { snapshotDeny } from './steps/snapshot-deny.ts'

export interface GroupSteps {
  readonly cache: SnapshotCache
  readonly clock: DbClock
  readonly outage: Outage
  readonly overLimit: OverLimitCache | null
  readonly postgres: AskPostgres
  readonly metrics: Metrics
  /** Steps 4 and 5 for one bucket (the limiter's). */
  readonly withoutPostgres: (request: BucketRequest, key: string) => Promise<Decision>
  /** Step 4 for all the buckets in one atomic Redis call, charged all or none; null: one by one. */
  readonly withoutPostgresTogether: (requests: readonly BucketRequest[]) => Promise<Decision[] | null>
  /** Gives a charged bucket's tokens back to the store that charged it. */
  readonly giveBack: (request: BucketRequest, charged: Decision) => Promise<boolean>
  /** One write-behind bucket's decision (the limiter's); null: every bucket is decided strictly. */
  readonly decideWriteBehind: ((request: BucketRequest, key: string) => Promise<Decision>) | null
  /** Several write-behind buckets in one atomic Redis call, all charged or none; null: decide them one by one. */
  readonly decideWriteBehindGroup: ((requests: readonly BucketRequest[]) => Promise<Decision[] | null>) | null
}

export class GroupFlow {
  readonly #d: GroupSteps

  constructor (steps: GroupSteps) {
    this.#d = steps
  }

  async decide (requests: readonly BucketRequest[], keys: readonly string[]): Promise<Decision[]> {
    if (this.#d.decideWriteBehind !== null && requests.some(isWriteBehind)) return await this.#mixed(requests, keys, this.#d.decideWriteBehind)
    // 1. Over-limit cache: one remembered refusal refuses the request.
    if (this.#d.overLimit !== null) {
      const now = this.#d.clock.nowMs()
      const local = requests.map((r, i) => this.#d.overLimit!.refuse(keys[i]!, r, now))
      if (local.some((d) => d !== null)) return await this.#refusedEarly(requests, keys, local, null)
    }
    if (!this.#d.outage.down) {
      // 2. Snapshot deny: the reads of one turn share one MGET; any snapshot that cannot pay refuses at once.
      const reads = await Promise.all(keys.map(async (k) => await this.#d.cache.read(k)))
      const now = this.#d.clock.nowMs()
      const denied = requests.map((r, i) => snapshotDeny(reads[i]!, r, now))
      if (denied.some((d) => d !== null)) {
        denied.forEach((d, i) => { const read = reads[i]!; if (d !== null && read.kind === 'snapshot') this.#d.overLimit?.remember(keys[i]!, read, requests[i]!, now) })
        return await this.#refusedEarly(requests, keys, denied, reads)
      }
      if (reads.some((r) => r === REDIS_OWNED)) {
        // Redis decides one of them: Redis decides the request (below), bucket by bucket.
        this.#d.outage.redisOwnedSeen()
      } else {
        if (reads.some((r) => r === HANDING_BACK)) this.#d.outage.redisOwnedSeen()
        try {
          // 3. PostgreSQL decides all of them in one transaction (migrations/006).
          return await this.#d.postgres.decideGroup(requests, keys, reads)
        } catch (err) {
          this.#d.outage.failed(err)
        }
      }
    }
    return await this.#withoutPostgres(requests, keys)
  }

  /**
   * Steps 4 and 5 for several buckets: on one Redis server all of them in one atomic call,
   * charged all or none. Where that cannot be (a Cluster, Redis away: the fail mode), each is
   * decided in turn, and the first refusal stops the request; the buckets already charged for
   * it are given back by the store that charged them (best effort: a refund that cannot be made
   * errs towards fewer tokens). Buckets not reached are reported from their cached snapshot, or
   * as full.
   */
  async #withoutPostgres (requests: readonly BucketRequest[], keys: readonly string[]): Promise<Decision[]> {
    const together = await this.#d.withoutPostgresTogether(requests)
    if (together !== null) return together.every((d) => d.allowed) ? together : await this.#refusedEarly(requests, keys, together, null)
    const out: Array<Decision | null> = requests.map(() => null)
    for (let i = 0; i < requests.length; i++) {
      const d = await this.#d.withoutPostgres(requests[i]!, keys[i]!)
      out[i] = d
      if (!d.allowed) return await this.#refuseCharged(requests, keys, out, out.slice(0, i) as Decision[])
    }
    return out as Decision[]
  }

  /**
   * Write-behind buckets beside strict ones (a per-second burst in Redis, a daily quota in
   * PostgreSQL): no bucket is decided by both stores. The write-behind buckets go first (a Redis
   * round trip, cheaper than PostgreSQL's transaction, and the burst is the one that usually
   * refuses): on one Redis server all of them in one atomic call, charged all or none; else (a
   * Cluster, Redis away) one by one. Then the strict ones, all or nothing among themselves
   * (steps 1-5 above). A refusal refuses the request, and every write-behind bucket already
   * charged for it is given back (refund.ts), so the request charges all of its buckets or none.
   */
  async #mixed (requests: readonly BucketRequest[], keys: readonly string[], decideWriteBehind: (request: BucketRequest, key: string) => Promise<Decision>): Promise<Decision[]> {
    const out: Array<Decision | null> = requests.map(() => null)
    const charged: Decision[] = []
    const refuse = async (): Promise<Decision[]> => await this.#refuseCharged(requests, keys, out, charged)
    const wb = requests.flatMap((r, i) => isWriteBehind(r) ? [i] : [])
    const together = wb.length > 1 && this.#d.decideWriteBehindGroup !== null ? await this.#d.decideWriteBehindGroup(wb.map((i) => requests[i]!)) : null
    if (together !== null) {
      together.forEach((d, j) => { out[wb[j]!] = d })
      // Refused together: nothing was charged, nothing to give back.
      if (together.some((d) => !d.allowed)) return await this.#refusedEarly(requests, keys, out, null)
      charged.push(...together)
    } else {
      for (const i of wb) {
        const d = await decideWriteBehind(requests[i]!, keys[i]!)
        out[i] = d
        if (!d.allowed) return await refuse()
        charged.push(d)
      }
    }
    const strict = requests.flatMap((r, i) => isWriteBehind(r) ? [] : [i])
    if (strict.length > 0) {
      const decided = await this.decide(strict.map((i) => requests[i]!), strict.map((i) => keys[i]!))
      decided.forEach((d, j) => { out[strict[j]!] = d })
      if (decided.some((d) => !d.allowed)) return await refuse()
    }
    return out as Decision[]
  }

  /**
   * A request refused after some of its buckets were charged (`charged`, decisions in `out`):
   * each is given back by the store that charged it and counted, then the request is reported.
   */
  async #refuseCharged (requests: readonly BucketRequest[], keys: readonly string[], out: ReadonlyArray<Decision | null>, charged: readonly Decision[]): Promise<Decision[]> {
    await Promise.all(charged.map(async (c) => {
      const done = await this.#d.giveBack(requests[out.indexOf(c)]!, c)
      this.#d.metrics.refunds.inc({ policy: c.policy.name, reason: 'group-refused', result: done ? 'refunded' : 'failed' })
    }))
    return await this.#refusedEarly(requests, keys, out, null, charged)
  }

  /**
   * A request refused before (or without) charging every bucket: the refusing buckets say so;
   * the others are reported as they stand (their cached snapshot, else full), uncharged.
   * `given`: decisions that were charged and have just been given back.
   */
  async #refusedEarly (requests: readonly BucketRequest[], keys: readonly string[], refused: ReadonlyArray<Decision | null>,
    reads: readonly CacheRead[] | null, given: readonly Decision[] = []): Promise<Decision[]> {
    const known = reads ?? (this.#d.outage.down ? requests.map(() => CACHE_SKIPPED) : await Promise.all(keys.map(async (k) => await this.#d.cache.read(k))))
    const now = this.#d.clock.nowMs()
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
}

function isWriteBehind (request: BucketRequest): boolean {
  return request.policy.consistency === 'write-behind'
}
