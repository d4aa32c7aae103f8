/**
 * The messages between the cluster primary and its workers (proxy.workers > 1), over the
 * cluster IPC channel. Every message carries TAG, because the same channel also carries
 * prom-client's metric requests (AggregatorRegistry) and Node's own cluster messages.
 *
 * A worker asks the primary a question about every worker (`ask`: readiness, metrics, forget);
 * the primary answers it (`reply`) after asking each worker its own part (`query` / `answer`).
 */
import type { ClusterReadiness, WorkerReadiness } from '../control/deps.ts'

export type { ClusterReadiness, WorkerReadiness }

export const TAG = 'ratelimit-gateway:workers'

/** What a worker can ask about the whole gateway. */
export type Question =
  | { readonly what: 'readiness' }
  | { readonly what: 'metrics' }
  /** Drop what every worker remembers of these buckets (admin reset, override change). */
  | { readonly what: 'forget', readonly cacheNames: readonly string[], readonly key: string }

/** What the primary asks each worker about itself. */
export type Query =
  | { readonly what: 'readiness' }
  /** The worker's registry as prom-client JSON (getMetricsAsJSON), for AggregatorRegistry.aggregate. */
  | { readonly what: 'metrics' }
  | { readonly what: 'forget', readonly cacheNames: readonly string[], readonly key: string }

export type ToPrimary =
  | { readonly tag: typeof TAG, readonly kind: 'listening', readonly port: number, readonly controlPort: number }
  | { readonly tag: typeof TAG, readonly kind: 'ask', readonly id: number, readonly question: Question }
  | { readonly tag: typeof TAG, readonly kind: 'answer', readonly id: number, readonly value: unknown }

export type ToWorker =
  | { readonly tag: typeof TAG, readonly kind: 'reply', readonly id: number, readonly value?: unknown, readonly error?: string }
  | { readonly tag: typeof TAG, readonly kind: 'query', readonly id: number, readonly query: Query }
  | { readonly tag: typeof TAG, readonly kind: 'reload', readonly reason: string }
  | { readonly tag: typeof TAG, readonly kind: 'shutdown' }

export function isOurs<T extends { tag: string }> (message: unknown): message is T {
  return typeof message === 'object' && message !== null && (message as { tag?: unknown }).tag === TAG
}

/** Environment the primary gives each worker it forks. */
export const ENV_SLOT = 'GATEWAY_WORKER'
export const ENV_COUNT = 'GATEWAY_WORKERS'
/** Set when the primary has applied the migrations: the workers skip them. */
export const ENV_MIGRATED = 'GATEWAY_MIGRATED'
