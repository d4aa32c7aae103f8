/** What a Limiter is built from: the store ports and its settings. */
import type { Config } from '../config/schema.ts'
import type { BucketLedger, DecidingStore, RedisDecider, SnapshotCache, WriteBehindRedis } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { FailModeDeciding } from './steps/fail-mode.ts'
import type { WriteBehindSync } from './write-behind.ts'

export interface LimiterPorts {
  readonly store: DecidingStore
  readonly cache: SnapshotCache
  readonly redis: RedisDecider
  /** Write-behind mode's two halves; absent: every policy is decided strictly. */
  readonly writeBehind?: {
    readonly redis: WriteBehindRedis
    readonly ledger: BucketLedger
    readonly sync: WriteBehindSync
  }
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
  /**
   * Read Redis alongside PostgreSQL's decision for buckets not recently seen low
   * (steps/read-alongside.ts). Default true; false runs the steps one after the other (tests
   * compare the two).
   */
  readonly readAlongside?: boolean
}

export type Deciding = 'redis-fallback' | FailModeDeciding

