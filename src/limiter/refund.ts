/**
 * Refunds: the buckets of an allowed request whose policy says so get their cost back when the
 * upstream failed, each from the store that charged it, never above capacity; and the charged
 * buckets of a group refused part-way (group.ts). Counted in gateway_refunds_total.
 */
import type { Decision, Verdict } from '../core/domain.ts'
import type { BucketRequest, SnapshotCache } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { AskPostgres } from './steps/deciding-store.ts'
import type { FailMode } from './steps/fail-mode.ts'
import type { RedisDecides } from './steps/redis-decides.ts'
import type { WriteBehindStep } from './steps/redis-write-behind.ts'

export interface RefundSteps {
  readonly cache: SnapshotCache
  readonly postgres: AskPostgres
  readonly redisDecides: RedisDecides
  readonly failMode: FailMode
  /** Write-behind buckets are given back in their own keys (null: no write-behind policy can be decided). */
  readonly writeBehind: WriteBehindStep | null
  readonly metrics: Metrics
  readonly log: Logger
}

export class Refunds {
  readonly #d: RefundSteps

  constructor (steps: RefundSteps) {
    this.#d = steps
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
        await this.#d.postgres.refund(pg.map((i) => requests[i]!), pg.map((i) => this.#d.cache.key(requests[i]!.policy.cacheName ?? requests[i]!.policy.name, verdict.userId)))
        for (const i of pg) results[i] = true
      } catch (err) {
        this.#d.log.warn({ err, user_id: verdict.userId }, 'refund failed: PostgreSQL did not take the tokens back')
      }
    }
    await Promise.all(due.map(async (d, i) => { if (d.decidedBy !== 'postgres') results[i] = await this.giveBack(requests[i]!, d) }))
    due.forEach((d, i) => this.#d.metrics.refunds.inc({ policy: d.policy.name, reason, result: results[i] ? 'refunded' : 'failed' }))
  }

  /** Gives a charged bucket's tokens back to the store that charged it (never above capacity). */
  async giveBack (request: BucketRequest, charged: Decision): Promise<boolean> {
    switch (charged.decidedBy) {
      case 'redis':
        // Redis decided a write-behind bucket in its own key; else it owned the bucket (the fallback).
        return charged.source !== 'redis-fallback' && request.policy.consistency === 'write-behind' && this.#d.writeBehind !== null
          ? await this.#d.writeBehind.refund(request)
          : await this.#d.redisDecides.refund(request)
      case 'gateway': return charged.source === 'local-fallback' && this.#d.failMode.refund(request)
      case 'postgres':
        try {
          await this.#d.postgres.refund([request], [this.#d.cache.key(request.policy.cacheName ?? request.policy.name, request.userId)])
          return true
        } catch {
          return false
        }
    }
  }
}
