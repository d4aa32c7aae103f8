/** What the control API works with: the limiter, the stores' ports, the live configuration. */
import type { Config } from '../config/schema.ts'
import type { DecidingStore, SnapshotCache } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { Limiter } from '../limiter/limiter.ts'
import type { Holder } from '../policy/holder.ts'
import type { OverrideStore } from '../stores/postgres/override-store.ts'
import type { Runtime } from '../admission/runtime.ts'

export interface ControlDeps {
  readonly config: Config
  readonly limiter: Limiter
  /** PostgreSQL: peek, reset, readiness. */
  readonly store: DecidingStore
  /** Redis snapshots: dropped when a bucket is raised; readiness. */
  readonly cache: SnapshotCache
  readonly metrics: Metrics
  readonly log: Logger
  /** The live configuration: policies by name (hot reload swaps it). */
  readonly runtime: Holder<Runtime>
  readonly overrides: OverrideStore
  /**
   * Set in a worker process (proxy.workers > 1): readiness, metrics and cache invalidation
   * then concern every worker, not only the one that happens to take the control request.
   */
  readonly cluster?: ClusterView
}

/** One process's own readiness, as its /readyz reports it when it runs alone. */
export interface LocalReadiness {
  readonly ready: boolean
  readonly postgres: 'up' | 'down'
  readonly redis: 'up' | 'down' | 'disabled'
  readonly deciding: string
}

export interface WorkerReadiness extends LocalReadiness {
  readonly worker: number
  readonly pid: number
}

export interface ClusterReadiness {
  /** Workers configured (proxy.workers resolved). */
  readonly expected: number
  /** Every worker that answered in time, the asking one included; a restarting one is missing. */
  readonly workers: readonly WorkerReadiness[]
}

/** The other workers, as the control API sees them (src/workers/worker.ts). */
export interface ClusterView {
  readiness: () => Promise<ClusterReadiness>
  /** The Prometheus text of every worker, aggregated by the primary. */
  metrics: () => Promise<string>
  /** Every worker forgets what it remembers of these buckets; resolves once all have. */
  forget: (cacheNames: readonly string[], key: string) => Promise<void>
}
