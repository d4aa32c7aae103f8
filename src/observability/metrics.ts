/**
 * Every Prometheus series the gateway exports, on one registry per gateway instance (several
 * can live in one process, as in tests). Names follow Prometheus conventions (base units,
 * `_total` counters, `_seconds` histograms); no caller id is ever a label. docs/observability.md
 * documents each series, and test/observability-assets.test.ts keeps the dashboard and the
 * alert rules to names exported here.
 *
 * Series whose label values are known in advance are created at zero up front: a counter that
 * first appears already at 1 is invisible to rate() and increase(), so the first blocked
 * request or the first fail-open would never show on a dashboard or fire an alert.
 */
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import { packageVersion } from '../core/package.ts'
import type { Decider, DecisionSource, RejectReason } from '../core/domain.ts'
import { FastCounter, FastHistogram, type CounterChild, type HistogramChild } from './fast-metrics.ts'

/** Decision latency: from an in-process decision (µs) to a struggling store (s). */
export const DECISION_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
/** Upstream latency: up to the default 30 s upstream timeout. */
export const UPSTREAM_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

export type Store = 'postgres' | 'redis'

// Records, not arrays, so that adding a source or a reason to its type fails to compile here
// until it is listed (and so pre-created at zero).
const SOURCES: Record<DecisionSource, true> = { redis: true, postgres: true, 'new-user': true, local: true, 'redis-fallback': true, 'local-fallback': true, 'fail-open': true }
export const DECISION_SOURCES = Object.keys(SOURCES) as DecisionSource[]
const REASONS: Record<RejectReason, true> = {
  missing: true, 'too-long': true, 'control-characters': true, 'invalid-utf8': true, 'duplicate-header': true, 'bad-address': true, 'missing-token': true, 'invalid-token': true, 'deny-list': true
}
/** Requests Node's HTTP parser refused before Fastify saw them (src/proxy/client-error.ts). */
export const CLIENT_ERROR_REASONS = ['header-too-large', 'malformed-request', 'client-timeout'] as const
/** CORS preflights refused by their per-address limit (proxy.preflightLimit). */
export const PREFLIGHT_REASONS = ['preflight-limit'] as const
export const REJECT_REASONS = [...Object.keys(REASONS) as RejectReason[], ...CLIENT_ERROR_REASONS, ...PREFLIGHT_REASONS]
/** Which store decides each source; decisions are counted and timed by both labels. */
export const DECIDERS_OF: Readonly<Record<DecisionSource, readonly Decider[]>> = {
  // postgres and new-user by Redis too: write-behind decisions of buckets loaded from PostgreSQL.
  redis: ['redis', 'postgres'], postgres: ['postgres', 'redis'], 'new-user': ['postgres', 'redis'], local: ['gateway'], 'redis-fallback': ['redis'], 'local-fallback': ['gateway'], 'fail-open': ['gateway']
}
export const CACHE_RESULTS = ['hit', 'miss', 'error', 'skipped', 'redis-owned', 'handing-back'] as const
export const STORE_OPERATIONS: ReadonlyArray<readonly [Store, string]> = [
  ['postgres', 'decide'], ['postgres', 'peek'], ['postgres', 'reset'], ['postgres', 'ping'],
  ['redis', 'get'], ['redis', 'set'], ['redis', 'del'], ['redis', 'ping'], ['redis', 'decide'],
  ['redis', 'wb-decide'], ['redis', 'wb-lower'], ['redis', 'wb-refund'], ['postgres', 'wb-load'], ['postgres', 'wb-sync']
]
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const
export const UPSTREAM_ERROR_KINDS = ['unreachable', 'timeout', 'interrupted'] as const
export const FAIL_MODES = ['local', 'open', 'closed'] as const
/** Who decides (docs/reliability.md): the normal path, Redis while PostgreSQL is down, a fail mode. */
export const DECIDING_MODES = ['postgres', 'redis-fallback', ...FAIL_MODES] as const

export class Metrics {
  readonly registry = new Registry()

  readonly decisions = new FastCounter({
    name: 'gateway_decisions_total',
    help: 'Rate-limit decisions, by result (allowed, blocked), source (X-Data-Source), policy and decided_by (the store that decided: postgres, redis, or gateway for this process).',
    labelNames: ['result', 'source', 'policy', 'decided_by'] as const,
    registers: [this.registry]
  })

  readonly cacheLookups = new FastCounter({
    name: 'gateway_cache_lookups_total',
    help: 'Redis snapshot lookups by result: hit, miss, error (failed or timed out), skipped (circuit open, disconnected or Redis disabled), redis-owned and handing-back (a bucket Redis decided while PostgreSQL was down).',
    labelNames: ['result'] as const,
    registers: [this.registry]
  })

  readonly storeOperations = new FastCounter({
    name: 'gateway_store_operations_total',
    help: 'Round trips to a store, by store and operation (one PostgreSQL decide carries a whole batch).',
    labelNames: ['store', 'operation'] as const,
    registers: [this.registry]
  })

  readonly storeErrors = new FastCounter({
    name: 'gateway_store_errors_total',
    help: 'Store round trips that failed or timed out, by store and operation.',
    labelNames: ['store', 'operation'] as const,
    registers: [this.registry]
  })

  readonly storeDeadlines = new FastCounter({
    name: 'gateway_store_deadline_expired_total',
    help: 'Store round trips abandoned at their deadline (the store kept the connection open but did not answer in time), by store and operation. A PostgreSQL decision abandoned this way may still commit: the caller is then charged twice (in PostgreSQL and by the fallback), never allowed twice.',
    labelNames: ['store', 'operation'] as const,
    registers: [this.registry]
  })

  readonly storeUp = new Gauge({
    name: 'gateway_store_up',
    help: '1 while the store answers, 0 from its first failure until it answers again. Absent for Redis when Redis is disabled.',
    labelNames: ['store'] as const,
    // With several workers (the primary sums every worker's series): up only while every
    // worker reaches the store, so one worker's outage still fires the alert.
    aggregator: 'min',
    registers: [this.registry]
  })

  readonly decisionDuration = new FastHistogram({
    name: 'gateway_decision_duration_seconds',
    help: 'Time spent deciding one request (store round trips included), by source (X-Data-Source) and decided_by (postgres, redis, gateway): a refusal from a Redis snapshot and a PostgreSQL decision on a cache hit share source="redis".',
    labelNames: ['source', 'decided_by'] as const,
    buckets: DECISION_BUCKETS,
    registers: [this.registry]
  })

  readonly postgresBatchSize = new FastHistogram({
    name: 'gateway_postgres_batch_size',
    help: 'Decisions sent to PostgreSQL in one round trip (group commit).',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    registers: [this.registry]
  })

  readonly upstreamDuration = new FastHistogram({
    name: 'gateway_upstream_duration_seconds',
    help: 'Time from forwarding an allowed request to the upstream\'s response headers.',
    buckets: UPSTREAM_BUCKETS,
    registers: [this.registry]
  })

  readonly proxiedResponses = new FastCounter({
    name: 'gateway_proxied_responses_total',
    help: 'Responses to allowed (forwarded) requests, by status class 1xx..5xx, including the gateway\'s own 502/504.',
    labelNames: ['status_class'] as const,
    registers: [this.registry]
  })

  readonly upstreamErrors = new FastCounter({
    name: 'gateway_upstream_errors_total',
    help: 'Forwarded requests that failed at the upstream, by kind: unreachable (502), timeout (504), or interrupted (the response body failed after its head was sent: reset, or a pause longer than the upstream timeout; the client connection is aborted).',
    labelNames: ['kind'] as const,
    registers: [this.registry]
  })

  readonly rejectedRequests = new FastCounter({
    name: 'gateway_rejected_requests_total',
    help: 'Requests refused before any bucket was touched, by reason: 400 for the caller id (missing, too-long, control-characters, invalid-utf8, bad-address), 401 for the JWT (missing-token, invalid-token), 403 for the deny list (deny-list), and requests the HTTP parser refused: 431 header-too-large, 400 malformed-request, 408 client-timeout.',
    labelNames: ['reason'] as const,
    registers: [this.registry]
  })

  readonly shadowDecisions = new FastCounter({
    name: 'gateway_shadow_decisions_total',
    help: 'Decisions of shadow-mode policies (always forwarded), by policy and result (allowed, would_block, unavailable).',
    labelNames: ['policy', 'result'] as const,
    registers: [this.registry]
  })

  readonly refunds = new FastCounter({
    name: 'gateway_refunds_total',
    help: 'Tokens given back (policy refund: the upstream was unreachable or timed out, or answered 5xx; or a request of several policies refused after some were charged while PostgreSQL was down), by policy, reason (upstream-error, 5xx, group-refused) and result (refunded, failed: the store that charged it could not take it back).',
    labelNames: ['policy', 'reason', 'result'] as const,
    registers: [this.registry]
  })

  readonly concurrency = new FastCounter({
    name: 'gateway_concurrency_slots_total',
    help: 'Concurrency slots asked for (policy concurrency: N), by policy, result (acquired, refused) and decided_by (redis: a lease in Redis; gateway: this gateway\'s share while Redis is unavailable).',
    labelNames: ['policy', 'result', 'decided_by'] as const,
    registers: [this.registry]
  })

  readonly allowListed = new FastCounter({
    name: 'gateway_allow_listed_requests_total',
    help: 'Requests from callers on the allow list, forwarded without touching a bucket.',
    registers: [this.registry]
  })

  readonly configReloads = new FastCounter({
    name: 'gateway_config_reloads_total',
    help: 'Configuration reloads (SIGHUP or a changed file) by result (applied, rejected).',
    labelNames: ['result'] as const,
    registers: [this.registry]
  })

  readonly failModeEvents = new FastCounter({
    name: 'gateway_fail_mode_events_total',
    help: 'Requests decided without PostgreSQL, by mode: redis-fallback (PostgreSQL unreachable, Redis decided), or the fail mode when both stores were unreachable (local, open, closed).',
    labelNames: ['mode'] as const,
    registers: [this.registry]
  })

  readonly failModeActive = new Gauge({
    name: 'gateway_fail_mode_active',
    help: 'Who decides now: 1 for the mode in force (postgres, redis-fallback, local, open, closed), 0 for the others. With several workers, 1 for every mode in force in any of them.',
    labelNames: ['mode'] as const,
    aggregator: 'max',
    registers: [this.registry]
  })

  readonly handedBack = new FastCounter({
    name: 'gateway_fallback_handed_back_total',
    help: 'Buckets that Redis decided while PostgreSQL was down, merged back into PostgreSQL.',
    registers: [this.registry]
  })

  readonly redisOwned = new Gauge({
    name: 'gateway_redis_owned_buckets',
    help: 'Buckets Redis decided and not yet handed back to PostgreSQL: the owned set, as this gateway last counted it (on each probe while PostgreSQL is down, after each hand-back pass). The same set for every gateway of a key prefix.',
    aggregator: 'max',
    registers: [this.registry]
  })

  readonly reseeds = new FastCounter({
    name: 'gateway_redis_reseeds_total',
    help: 'Re-seeds of a Redis, or of one of its Cluster shards, that held no snapshots of this fleet (restarted empty, flushed, or first start): PostgreSQL\'s spent buckets written to it again, by result (done, failed). One gateway of a key prefix does each.',
    labelNames: ['result'] as const,
    registers: [this.registry]
  })

  readonly reseededBuckets = new FastCounter({
    name: 'gateway_redis_reseeded_buckets_total',
    help: 'Snapshots a re-seed wrote to Redis: PostgreSQL\'s buckets that were not full.',
    registers: [this.registry]
  })

  readonly redisUnsent = new Gauge({
    name: 'gateway_redis_unsent_snapshots',
    help: 'Buckets whose latest snapshot write this gateway holds because Redis did not take it (disconnected, circuit open, or the call failed): written as soon as Redis answers again, so Redis never takes a bucket over from a state older than PostgreSQL\'s. At most 100,000 per gateway.',
    registers: [this.registry]
  })

  readonly syncFlushes = new FastCounter({
    name: 'gateway_write_behind_flushes_total',
    help: 'Write-behind flushes to PostgreSQL (one statement each), by result (ok, failed: its entries are kept and retried).',
    labelNames: ['result'] as const,
    registers: [this.registry]
  })

  readonly syncKeys = new FastHistogram({
    name: 'gateway_write_behind_flush_keys',
    help: 'Buckets written to PostgreSQL in one write-behind flush.',
    buckets: [1, 4, 16, 64, 256, 1024, 4096, 16384],
    registers: [this.registry]
  })

  readonly syncPending = new Gauge({
    name: 'gateway_write_behind_pending_keys',
    help: 'Buckets decided in write-behind mode whose latest state PostgreSQL does not have yet.',
    registers: [this.registry]
  })

  readonly syncOldestAge = new Gauge({
    name: 'gateway_write_behind_oldest_unsynced_seconds',
    help: 'Age of the oldest bucket change not yet written to PostgreSQL (0 when everything is written). Above a few sync intervals, flushes are failing: a bucket Redis loses now can be allowed again what its caller spent since.',
    registers: [this.registry]
  })

  readonly syncInterval = new Gauge({
    name: 'gateway_write_behind_sync_interval_seconds',
    help: 'The configured write-behind sync interval (limits.syncIntervalMs): the alert on the oldest unsynced change is relative to it.',
    registers: [this.registry]
  })

  readonly buildInfo = new Gauge({
    name: 'gateway_build_info',
    help: 'Always 1; the version label is the gateway\'s package version.',
    labelNames: ['version'] as const,
    aggregator: 'first',
    registers: [this.registry]
  })

  /** Bound children for the request path (no label lookup per request). */
  readonly bound: {
    readonly proxied: Readonly<Record<typeof STATUS_CLASSES[number], CounterChild>>
    readonly upstreamDuration: HistogramChild
    readonly upstreamErrors: Readonly<Record<typeof UPSTREAM_ERROR_KINDS[number], CounterChild>>
  }

  readonly #policies = new Set<string>()

  constructor () {
    collectDefaultMetrics({ register: this.registry })
    // Gauges named *_total break the naming rule (promtool check metrics flags them); each is
    // the sum of the per-type gauge of the same name without _total, which stays.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name)
    for (const store of ['postgres', 'redis'] as const) this.storeUp.set({ store }, 0)
    this.buildInfo.set({ version: packageVersion() }, 1)
    for (const result of CACHE_RESULTS) this.cacheLookups.labels(result)
    for (const [store, operation] of STORE_OPERATIONS) {
      this.storeOperations.labels(store, operation)
      this.storeErrors.labels(store, operation)
    }
    for (const operation of ['decide', 'ping']) this.storeDeadlines.labels('postgres', operation)
    for (const source of DECISION_SOURCES) for (const by of DECIDERS_OF[source]) this.decisionDuration.labels(source, by)
    for (const reason of REJECT_REASONS) this.rejectedRequests.labels(reason)
    for (const mode of DECIDING_MODES) {
      if (mode !== 'postgres') this.failModeEvents.labels(mode)
      this.failModeActive.set({ mode }, mode === 'postgres' ? 1 : 0)
    }
    this.handedBack.labels()
    for (const result of ['ok', 'failed']) this.syncFlushes.labels(result)
    this.syncPending.set(0)
    this.syncOldestAge.set(0)
    this.syncInterval.set(0.1)
    this.allowListed.labels()
    for (const result of ['applied', 'rejected']) this.configReloads.labels(result)
    this.bound = {
      proxied: Object.fromEntries(STATUS_CLASSES.map((c) => [c, this.proxiedResponses.labels(c)])) as Record<typeof STATUS_CLASSES[number], CounterChild>,
      upstreamDuration: this.upstreamDuration.labels(),
      upstreamErrors: Object.fromEntries(UPSTREAM_ERROR_KINDS.map((k) => [k, this.upstreamErrors.labels(k)])) as Record<typeof UPSTREAM_ERROR_KINDS[number], CounterChild>
    }
  }

  /** Creates every decision series of a policy at zero (see the module comment). */
  initPolicy (policy: string, shadow = false): void {
    if (shadow) for (const result of ['allowed', 'would_block', 'unavailable']) this.shadowDecisions.labels(policy, result)
    if (this.#policies.has(policy)) return
    this.#policies.add(policy)
    for (const source of DECISION_SOURCES) {
      for (const by of DECIDERS_OF[source]) for (const result of ['allowed', 'blocked']) this.decisions.labels(result, source, policy, by)
    }
  }

  /** The series of a store that is switched off: no up gauge, so no "down" alert for it. */
  storeDisabled (store: Store): void {
    this.storeUp.remove({ store })
  }
}
