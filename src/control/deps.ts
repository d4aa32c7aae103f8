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
}
