/**
 * The limiter's parts, built from its ports and settings and wired to one another; limiter.ts
 * only orders them. Every part sees the live fallback settings through `fallback()`.
 */
import type { Config } from '../config/schema.ts'
import type { Decision } from '../core/domain.ts'
import type { BucketRequest, SnapshotCache } from '../core/ports.ts'
import { DbClock } from './db-clock.ts'
import { GroupFlow } from './group.ts'
import { DecidingMode } from './mode.ts'
import type { LimiterOptions, LimiterPorts } from './options.ts'
import { Outage } from './outage.ts'
import { Refunds } from './refund.ts'
import { AskPostgres } from './steps/deciding-store.ts'
import { FailMode } from './steps/fail-mode.ts'
import { OverLimitCache } from './steps/over-limit.ts'
import { ReadAlongside } from './steps/read-alongside.ts'
import { RecentlyLow } from './steps/recently-low.ts'
import { RedisDecides } from './steps/redis-decides.ts'
import { WriteBehindStep } from './steps/redis-write-behind.ts'
import { DENY_MARGIN_MS } from './steps/snapshot-deny.ts'
import { WithoutPostgres } from './steps/without-postgres.ts'
import type { WriteBehindSync } from './write-behind.ts'

export interface LimiterParts {
  readonly cache: SnapshotCache
  readonly clock: DbClock
  readonly mode: DecidingMode
  readonly outage: Outage
  readonly overLimit: OverLimitCache | null
  readonly postgres: AskPostgres
  readonly alongside: ReadAlongside | null
  readonly withoutPostgres: WithoutPostgres
  readonly failMode: FailMode
  readonly group: GroupFlow
  readonly refunds: Refunds
  /** A write-behind bucket's decision (null: no write-behind policy can be decided here). */
  readonly decideWriteBehind: ((request: BucketRequest, key: string) => Promise<Decision>) | null
  readonly writeBehindSync: WriteBehindSync | undefined
}

export function assemble (ports: LimiterPorts, options: LimiterOptions, fallback: () => Config['fallback']): LimiterParts {
  const { metrics, log } = options
  const cache = ports.cache
  const clock = new DbClock(undefined, options.now)
  const mode = new DecidingMode(metrics, log)
  const outage = new Outage({ store: ports.store, redis: ports.redis, mode, fallback, metrics, log })
  const local = options.localDenyCache
  const overLimit = local?.enabled === true ? new OverLimitCache(local.maxEntries, DENY_MARGIN_MS) : null
  const low = options.readAlongside === false ? null : new RecentlyLow(clock.nowMs())
  const postgres = new AskPostgres(ports.store, cache, clock, overLimit, low)
  const redisDecides = new RedisDecides(ports.redis, clock, metrics)
  const failMode = new FailMode(options.fallback, mode, metrics, options.now)
  const withoutPostgres = new WithoutPostgres({ cache, postgres, redisDecides, failMode, outage, mode, fallback })
  const wb = ports.writeBehind
  const writeBehind = wb === undefined
    ? null
    : new WriteBehindStep({ ...wb, outage, log, retryMs: () => fallback().probeIntervalMs, ...(options.now === undefined ? {} : { now: options.now }) })
  // Redis decides; where it cannot, PostgreSQL strictly (its state reaches Redis before Redis decides again).
  const decideWriteBehind = writeBehind === null
    ? null
    : async (request: BucketRequest, key: string): Promise<Decision> => {
      const decided = await writeBehind.decide(request) ?? await withoutPostgres.strictly(request, key)
      if (decided.decidedBy === 'postgres') writeBehind.decidedWithoutRedis(request)
      return decided
    }
  const refunds = new Refunds({ cache, postgres, redisDecides, failMode, writeBehind, metrics, log })
  return {
    cache,
    clock,
    mode,
    outage,
    overLimit,
    postgres,
    alongside: low === null ? null : new ReadAlongside(postgres, low),
    withoutPostgres,
    failMode,
    refunds,
    group: new GroupFlow({
      cache, clock, outage, overLimit, postgres, metrics, decideWriteBehind,
      decideWriteBehindGroup: writeBehind === null ? null : async (requests) => await writeBehind.decideGroup(requests),
      withoutPostgres: async (request, key) => await withoutPostgres.decide(request, key),
      withoutPostgresTogether: async (requests) => await withoutPostgres.decideGroup(requests),
      giveBack: async (request, charged) => await refunds.giveBack(request, charged)
    }),
    decideWriteBehind,
    writeBehindSync: wb?.sync
  }
}
