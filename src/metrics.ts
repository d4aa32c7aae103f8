/**
 * Every Prometheus series the gateway exports, on one registry per gateway instance (several
 * can live in one process, as in tests). Names follow Prometheus conventions; no caller id is
 * ever a label. README "Metrics" documents each.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** Decision latency: from a local cache (~µs) to a struggling store (~s). */
const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

export type Store = 'postgres' | 'redis'

export class Metrics {
  readonly registry = new Registry()

  readonly decisions = new Counter({
    name: 'gateway_decisions_total',
    help: 'Rate-limit decisions, by result (allowed, blocked), source and policy.',
    labelNames: ['result', 'source', 'policy'] as const,
    registers: [this.registry]
  })

  readonly cacheLookups = new Counter({
    name: 'gateway_cache_lookups_total',
    help: 'Redis snapshot lookups by result: hit, miss, error (failed or timed out), skipped (circuit open or Redis disabled), redis-owned and handing-back (Redis decided the bucket while PostgreSQL was down).',
    labelNames: ['result'] as const,
    registers: [this.registry]
  })

  readonly storeOperations = new Counter({
    name: 'gateway_store_operations_total',
    help: 'Operations sent to a store, by store and operation.',
    labelNames: ['store', 'operation'] as const,
    registers: [this.registry]
  })

  readonly storeErrors = new Counter({
    name: 'gateway_store_errors_total',
    help: 'Store operations that failed or timed out, by store and operation.',
    labelNames: ['store', 'operation'] as const,
    registers: [this.registry]
  })

  readonly storeUp = new Gauge({
    name: 'gateway_store_up',
    help: '1 when the store answered its last operation, 0 while it is failing.',
    labelNames: ['store'] as const,
    registers: [this.registry]
  })

  readonly decisionDuration = new Histogram({
    name: 'gateway_decision_duration_seconds',
    help: 'Time spent deciding one request, by source.',
    labelNames: ['source'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry]
  })

  readonly postgresBatchSize = new Histogram({
    name: 'gateway_postgres_batch_size',
    help: 'Decisions sent to PostgreSQL in one round trip (group commit).',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    registers: [this.registry]
  })

  readonly upstreamDuration = new Histogram({
    name: 'gateway_upstream_duration_seconds',
    help: 'Time from forwarding a request to the upstream response headers.',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry]
  })

  readonly proxiedResponses = new Counter({
    name: 'gateway_proxied_responses_total',
    help: 'Responses to forwarded requests, by status class (2xx..5xx), including the gateway\'s own 502/504.',
    labelNames: ['status_class'] as const,
    registers: [this.registry]
  })

  readonly upstreamErrors = new Counter({
    name: 'gateway_upstream_errors_total',
    help: 'Forwarded requests that failed at the upstream: unreachable (502) or timeout (504).',
    labelNames: ['kind'] as const,
    registers: [this.registry]
  })

  readonly rejectedRequests = new Counter({
    name: 'gateway_rejected_requests_total',
    help: 'Requests refused before any bucket was touched, by reason.',
    labelNames: ['reason'] as const,
    registers: [this.registry]
  })

  readonly failModeEvents = new Counter({
    name: 'gateway_fail_mode_events_total',
    help: 'Requests decided by a fail mode because both stores were unreachable, by mode (local, open, closed), and requests Redis decided because PostgreSQL was (redis-fallback).',
    labelNames: ['mode'] as const,
    registers: [this.registry]
  })

  readonly failModeActive = new Gauge({
    name: 'gateway_fail_mode_active',
    help: 'Which store decides now: 1 for the active mode (postgres, redis-fallback, local, open, closed), 0 for the others.',
    labelNames: ['mode'] as const,
    registers: [this.registry]
  })

  readonly handedBack = new Counter({
    name: 'gateway_fallback_handed_back_total',
    help: 'Buckets that Redis decided while PostgreSQL was down, merged back into PostgreSQL.',
    registers: [this.registry]
  })

  constructor () {
    collectDefaultMetrics({ register: this.registry })
    for (const store of ['postgres', 'redis'] as const) this.storeUp.set({ store }, 0)
    for (const mode of ['postgres', 'redis-fallback', 'local', 'open', 'closed']) this.failModeActive.set({ mode }, mode === 'postgres' ? 1 : 0)
  }
}
