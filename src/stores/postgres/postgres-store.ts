/**
 * PostgreSQL, the source of truth (the DecidingStore port). Every allowance is decided here,
 * one round trip per batch of concurrent decisions: by rate_limit_decide_batch (migrations/007,
 * set-based) for large batches, by 006's rate_limit_decide_groups (the same results, a loop per
 * key) for small ones, by 009's rate_limit_decide_distinct for small ones where every request
 * asks one bucket and none occurs twice, by 008's rate_limit_decide_one for a batch of one
 * bucket; the hand-back merges are rate_limit_lock and rate_limit_merge.
 */
import postgres, { type Options, type Sql } from 'postgres'
import type { Config } from '../../config/schema.ts'
import type { BucketSnapshot, Policy } from '../../core/domain.ts'
import { MigrationsMissing, StoreFailure } from '../../core/errors.ts'
import type { BucketPeek, BucketRequest, DecidingStore, OwnedBucket, SpentBucket, StoreDecision } from '../../core/ports.ts'
import type { Logger } from '../../observability/log.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { Batcher } from '../batcher.ts'
import { withDeadline } from '../deadline.ts'
import { float8Array, int4Array, textArray } from './arrays.ts'
import { PoolSockets } from './sockets.ts'
import { StoreHealth } from '../health.ts'
import { migrate, pendingMigrations } from './migrate.ts'

/**
 * Batches of at least this many items are decided by migrations/007's set-based statements
 * (rate_limit_decide_batch); smaller ones by 006's loop (rate_limit_decide_groups), which costs
 * PostgreSQL less there: measured here (bench/decide-cpu.ts), 007 used 68% more CPU per decision
 * at 1 item, 33% more at 16, and 22-27% less at 64-256 (docs/performance.md).
 */
export const SET_BASED_FROM = 32

interface DecideRow { o_idx: number, o_allowed: boolean, o_can_pay: boolean, o_tokens: number, o_at_ms: number, o_created: boolean }

/**
 * No bucket occurs twice among a small batch's items (rate_limit_decide_distinct's condition).
 * Pairwise: below SET_BASED_FROM items that is at most 465 comparisons, and nothing allocated.
 */
export function distinctKeys (policies: readonly string[], users: readonly string[]): boolean {
  for (let i = 1; i < users.length; i++) {
    const user = users[i]!
    for (let j = 0; j < i; j++) if (users[j] === user && policies[j] === policies[i]) return false
  }
  return true
}

/** Connection-level failures: Node's socket and resolver errors, postgres.js's connection errors. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ETIMEDOUT', 'EPIPE',
  'ENOTFOUND', 'EAI_AGAIN', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECTION_ENDED'])

/**
 * PostgreSQL did not answer: a connection refused, lost or never made, or no answer within a
 * deadline (as opposed to answering with an error: auth, missing database, SQL). Anything else
 * (a port in use, a file missing) is not, so start-up does not blame PostgreSQL for it.
 */
export function isUnreachable (err: unknown): boolean {
  let e: unknown = err
  for (let depth = 0; e instanceof Error && depth < 4; depth++) {
    if (e instanceof postgres.PostgresError) return false
    if (e instanceof StoreFailure) return e.store === 'postgres'
    // Several addresses tried (localhost: ::1 and 127.0.0.1), each refused.
    if (e instanceof AggregateError) return e.errors.some(isUnreachable)
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return true
    e = e.cause
  }
  return false
}

export class PostgresStore implements DecidingStore {
  readonly sql: Sql
  readonly health: StoreHealth
  readonly #metrics: Metrics
  readonly #log: Logger
  /** One item per request: its buckets, decided all or nothing. */
  readonly #batcher: Batcher<readonly BucketRequest[], StoreDecision[]>
  readonly #sockets: PoolSockets
  readonly #decisionTimeoutMs: number
  /** Everything off the request path (admin, hand-back, overrides) waits at most this long. */
  readonly #statementTimeoutMs: number
  readonly #startTimeoutMs: number
  /**
   * The decisions' own connections, one per batch slot, each a pool of one; `#idle` is a stack,
   * so a batch takes the connection that answered last. postgres.js hands each query to the
   * connection idle longest: sequential decisions on a shared pool landed each on a backend
   * that had been asleep (PostgresStore.decide, one at a time: 1.16 ms at p50 over the default
   * ten connections, 0.74 ms over one). Under load every slot is busy and nothing changes.
   */
  readonly #deciders: Sql[]
  readonly #idle: Sql[]

  constructor (config: Config['postgres'], log: Logger, metrics: Metrics) {
    this.#log = log
    this.#metrics = metrics
    this.health = new StoreHealth('postgres', log, metrics)
    this.#decisionTimeoutMs = config.decisionTimeoutMs
    this.#statementTimeoutMs = config.statementTimeoutMs
    this.#startTimeoutMs = config.startTimeoutMs
    this.#sockets = new PoolSockets()
    // With one connection in all (the embedded PGlite takes no more) the decisions share it.
    const own = config.poolSize > 1
    const slots = own ? Math.min(config.poolSize - 1, config.batchMaxInFlight) : 1
    const options = {
      connect_timeout: config.connectTimeoutSeconds,
      idle_timeout: 60,
      // A dead peer is noticed on an idle connection too (seconds before the first probe).
      keep_alive: 10,
      // Supported by postgres.js (src/connection.js createSocket), absent from its types.
      ...({ socket: this.#sockets.create } as object),
      prepare: config.prepare,
      // No array-type query on each new connection: arrays.ts builds the array parameters.
      fetch_types: false,
      onnotice: () => {},
      // Bounded server-side too (a slow statement), besides the client-side deadlines here
      // (a server that does not answer at all).
      connection: {
        statement_timeout: config.statementTimeoutMs,
        application_name: 'ratelimit-gateway',
        ...(config.synchronousCommit ? {} : { synchronous_commit: 'off' })
      }
    }
    // poolSize in all: the decisions' connections, and the rest for everything else.
    this.sql = postgres(config.url, { ...options, max: config.poolSize - (own ? slots : 0) })
    // Each a pool of one on the pool's own parsed options (as postgres.js makes its LISTEN
    // connection): the same socket factory, connection parameters and types.
    this.#deciders = own ? Array.from({ length: slots }, () => postgres({ ...this.sql.options, max: 1 } as unknown as Options<Record<string, never>>)) : [this.sql]
    this.#idle = [...this.#deciders].reverse()
    this.#batcher = new Batcher((items) => this.#decideBatch(items), {
      maxSize: config.batchMaxSize,
      // One batch per decision connection: a batch always finds one idle.
      maxInFlight: slots,
      windowMs: config.batchWindowMs,
      // A decision waits at most the deadline for a slot and at most the deadline for its
      // answer: that bounds how long after its cache read a PostgreSQL allowance can reach
      // Redis, which the take-over fence relies on (scripts.ts, the "t" state).
      maxWaitMs: config.decisionTimeoutMs,
      expired: (waitedMs) => {
        this.#metrics.storeErrors.inc({ store: 'postgres', operation: 'decide' })
        return new StoreFailure('postgres', `a decision waited ${Math.round(waitedMs)} ms for a batch slot, past postgres.decisionTimeoutMs (${config.decisionTimeoutMs} ms)`, { timedOut: true })
      }
    })
  }

  /** Checks the connection and applies migrations. Throws when PostgreSQL is unreachable. */
  async start (runMigrations: boolean): Promise<void> {
    await this.ping()
    await this.prepare(runMigrations)
    // Open the connections the batches use now, so the first requests do not pay their set-up
    // against the decision deadline.
    await Promise.all(this.#deciders.map(async (sql) => await sql`SELECT 1`)).catch(() => {})
  }

  /**
   * Applies the migrations (advisory-locked: several gateways may do it at once), waiting at
   * most postgres.startTimeoutMs: another gateway holding the lock, or a server that stopped
   * answering, ends start-up with an error that says so. Without `runMigrations` (postgres.migrate
   * false), checks that they have been applied instead: MigrationsMissing if not.
   */
  async prepare (runMigrations: boolean): Promise<void> {
    if (!runMigrations) {
      // Applied elsewhere (a deploy step, the cluster primary): this version's functions must be there.
      const missing = await withDeadline(pendingMigrations(this.sql), this.#startTimeoutMs, 'postgres', 'migration check', () => this.#expired('migrate', this.#startTimeoutMs))
      if (missing.length > 0) throw new MigrationsMissing(missing)
      return
    }
    const applied = await withDeadline(migrate(this.sql), this.#startTimeoutMs, 'postgres',
      'migrations (postgres.startTimeoutMs, DATABASE_START_TIMEOUT_MS; another gateway may hold the migration lock)', () => this.#expired('migrate', this.#startTimeoutMs))
    if (applied.length > 0) this.#log.info({ applied }, 'migrations applied')
  }

  /** Whether PostgreSQL answers within the decision deadline (readiness, recovery probes). */
  async ping (): Promise<void> {
    this.#metrics.storeOperations.inc({ store: 'postgres', operation: 'ping' })
    try {
      await withDeadline(this.sql`SELECT 1`.execute(), this.#decisionTimeoutMs, 'postgres', 'ping', () => this.#expired('ping', this.#decisionTimeoutMs))
      this.health.succeeded()
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'postgres', operation: 'ping' })
      this.health.failed(err)
      throw err
    }
  }

  /** Counts one round trip off the request path and its failure; bounded by the statement timeout. */
  async #counted<T> (operation: string, run: () => Promise<T>): Promise<T> {
    this.#metrics.storeOperations.inc({ store: 'postgres', operation })
    try {
      return await this.bounded(operation, run())
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'postgres', operation })
      throw err
    }
  }

  async decide (request: BucketRequest): Promise<StoreDecision> {
    return (await this.#batcher.submit([request]))[0]!
  }

  get busy (): boolean { return this.#batcher.saturated }

  decideGroup (requests: readonly BucketRequest[]): Promise<StoreDecision[]> {
    return this.#batcher.submit(requests)
  }

  /** One round trip for the batch's requests: each request's buckets are one group (migrations/006, 007). */
  async #decideBatch (groups: Array<readonly BucketRequest[]>): Promise<StoreDecision[][]> {
    let n = 0
    for (const g of groups) n += g.length
    this.#metrics.storeOperations.inc({ store: 'postgres', operation: 'decide' })
    this.#metrics.postgresBatchSize.observe(groups.length)
    let rows: DecideRow[]
    // The batcher runs at most one batch per decision connection: one is always idle here.
    const sql = this.#idle.pop()!
    try {
      rows = await withDeadline((n === 1 ? this.#oneQuery(sql, groups[0]![0]!) : this.#batchQuery(sql, groups, n)).execute(),
        this.#decisionTimeoutMs, 'postgres', 'decision', () => this.#expired('decide', this.#decisionTimeoutMs))
    } catch (err) {
      // Last in line: after a deadline its query may still hold the connection.
      this.#idle.unshift(sql)
      this.#metrics.storeErrors.inc({ store: 'postgres', operation: 'decide' })
      this.health.failed(err)
      throw err instanceof StoreFailure ? err : new StoreFailure('postgres', 'PostgreSQL could not decide', { cause: err })
    }
    this.#idle.push(sql)
    this.health.succeeded()
    const flat = new Array<StoreDecision>(n)
    for (const r of rows) {
      flat[r.o_idx - 1] = { allowed: r.o_allowed, canPay: r.o_can_pay, snapshot: { tokens: r.o_tokens, atMs: r.o_at_ms }, created: r.o_created }
    }
    const out = new Array<StoreDecision[]>(groups.length)
    let at = 0
    for (let g = 0; g < groups.length; g++) {
      const size = groups[g]!.length
      out[g] = flat.slice(at, at + size)
      at += size
    }
    return out
  }

  /**
   * One bucket (every decision of a gateway that is not busy): migrations/008's scalar function,
   * the same result as 006's for a batch of one without its arrays (docs/performance.md).
   */
  #oneQuery (sql: Sql, it: BucketRequest): postgres.PendingQuery<DecideRow[]> {
    return sql<DecideRow[]>`SELECT 1 AS o_idx, o_allowed, o_allowed AS o_can_pay, o_tokens, o_at_ms, o_created
      FROM rate_limit_decide_one(${it.policy.name}::text, ${it.userId}::text, ${it.cost}::float8, ${it.policy.capacity}::float8, ${it.policy.refillPerSecond}::float8)`
  }

  /**
   * The set-based function from SET_BASED_FROM items, the per-key loop below it, where its few
   * cheap statements cost less, and below it too, when every request asks one bucket and no
   * bucket occurs twice (the usual batch), 009's loop of one UPDATE per allowance; the same
   * results every way (test/decide-batch.test.ts).
   */
  #batchQuery (sql: Sql, groups: Array<readonly BucketRequest[]>, n: number): postgres.PendingQuery<DecideRow[]> {
    const groupIds = new Array<number>(n)
    const policies = new Array<string>(n)
    const users = new Array<string>(n)
    const costs = new Array<number>(n)
    const capacities = new Array<number>(n)
    const rates = new Array<number>(n)
    let i = 0
    for (let g = 0; g < groups.length; g++) {
      for (const it of groups[g]!) {
        groupIds[i] = g + 1
        policies[i] = it.policy.name
        users[i] = it.userId
        costs[i] = it.cost
        capacities[i] = it.policy.capacity
        rates[i] = it.policy.refillPerSecond
        i++
      }
    }
    const [p, u, c, cap, r] = [textArray(sql, policies), textArray(sql, users),
      float8Array(sql, costs), float8Array(sql, capacities), float8Array(sql, rates)]
    if (n < SET_BASED_FROM && groups.length === n && distinctKeys(policies, users)) {
      return sql<DecideRow[]>`SELECT o_idx, o_allowed, o_can_pay, o_tokens, o_at_ms, o_created
        FROM rate_limit_decide_distinct(${p}::text[], ${u}::text[], ${c}::float8[], ${cap}::float8[], ${r}::float8[])`
    }
    const gs = int4Array(sql, groupIds)
    return n >= SET_BASED_FROM
      ? sql<DecideRow[]>`SELECT o_idx, o_allowed, o_can_pay, o_tokens, o_at_ms, o_created
          FROM rate_limit_decide_batch(${gs}::int[], ${p}::text[], ${u}::text[], ${c}::float8[], ${cap}::float8[], ${r}::float8[])`
      : sql<DecideRow[]>`SELECT o_idx, o_allowed, o_can_pay, o_tokens, o_at_ms, o_created
          FROM rate_limit_decide_groups(${gs}::int[], ${p}::text[], ${u}::text[], ${c}::float8[], ${cap}::float8[], ${r}::float8[])`
  }

  /** rate_limit_refund (migrations/006): each bucket gets its cost back, never above capacity. */
  async refund (requests: readonly BucketRequest[]): Promise<BucketSnapshot[]> {
    const rows = await this.#counted('refund', async () => await this.sql<Array<{ o_idx: number, o_tokens: number, o_at_ms: number }>>`
      SELECT o_idx, o_tokens, o_at_ms FROM rate_limit_refund(
        ${textArray(this.sql, requests.map((r) => r.policy.name))}::text[], ${textArray(this.sql, requests.map((r) => r.userId))}::text[],
        ${float8Array(this.sql, requests.map((r) => r.cost))}::float8[], ${float8Array(this.sql, requests.map((r) => r.policy.capacity))}::float8[],
        ${float8Array(this.sql, requests.map((r) => r.policy.refillPerSecond))}::float8[])`.execute())
    const out = new Array<BucketSnapshot>(requests.length)
    for (const r of rows) out[r.o_idx - 1] = { tokens: r.o_tokens, atMs: Number(r.o_at_ms) }
    return out
  }

  /** The stored bucket and the database's clock, without spending (admin peek). */
  async peek (policy: string, userId: string): Promise<BucketPeek> {
    const rows = await this.#counted('peek', async () => await this.sql<Array<{ tokens: number | null, at_ms: number | null, now_ms: number }>>`
      SELECT r.tokens, extract(epoch FROM r.last_refill_time) * 1000 AS at_ms, extract(epoch FROM clock_timestamp()) * 1000 AS now_ms
      FROM (SELECT 1) AS one LEFT JOIN rate_limits r ON r.policy = ${policy} AND r.user_id = ${userId}`)
    const row = rows[0]!
    const snapshot = row.tokens === null || row.at_ms === null ? null : { tokens: row.tokens, atMs: Number(row.at_ms) }
    return { snapshot, nowMs: Number(row.now_ms) }
  }

  /** Forgets a bucket: the caller starts full on the next request. */
  async reset (policy: string, userId: string): Promise<boolean> {
    const result = await this.#counted('reset', async () => await this.sql`DELETE FROM rate_limits WHERE policy = ${policy} AND user_id = ${userId}`)
    return result.count > 0
  }

  async handBack (buckets: readonly OwnedBucket[], takeOver: (buckets: readonly OwnedBucket[]) => Promise<ReadonlyArray<number | null>>): Promise<Array<BucketSnapshot | null>> {
    const policies = buckets.map((b) => b.policy)
    const users = buckets.map((b) => b.userId)
    const capacities = buckets.map((b) => b.capacity)
    const merged = new Array<BucketSnapshot | null>(buckets.length).fill(null)
    await this.bounded('hand-back', this.sql.begin(async (tx) => {
      await tx`SELECT rate_limit_lock(${textArray(tx, policies)}::text[], ${textArray(tx, users)}::text[], ${float8Array(tx, capacities)}::float8[])`
      const tokens = await takeOver(buckets)
      const idx: number[] = []
      for (let i = 0; i < buckets.length; i++) if (tokens[i] !== null) idx.push(i)
      if (idx.length === 0) return
      const rows = await tx<Array<{ o_idx: number, o_tokens: number, o_at_ms: number }>>`
        SELECT o_idx, o_tokens, o_at_ms FROM rate_limit_merge(
          ${textArray(tx, idx.map((i) => policies[i]!))}::text[], ${textArray(tx, idx.map((i) => users[i]!))}::text[],
          ${float8Array(tx, idx.map((i) => capacities[i]!))}::float8[], ${float8Array(tx, idx.map((i) => buckets[i]!.refillPerSecond))}::float8[],
          ${float8Array(tx, idx.map((i) => tokens[i]!))}::float8[])`
      for (const r of rows) merged[idx[r.o_idx - 1]!] = { tokens: r.o_tokens, atMs: Number(r.o_at_ms) }
    }))
    return merged
  }

  /**
   * One page of the re-seed: a range scan of the primary key (policy, user_id) from the cursor,
   * keeping the rows not full now under the caller's override or else the policy's numbers.
   */
  async spentBuckets (policy: Policy, afterUserId: string, limit: number): Promise<SpentBucket[]> {
    const rows = await this.#counted('reseed', async () => await this.sql<Array<{ user_id: string, tokens: number, at_ms: number }>>`
      SELECT r.user_id, r.tokens, extract(epoch FROM r.last_refill_time) * 1000 AS at_ms
      FROM rate_limits r LEFT JOIN rate_limit_overrides o ON o.policy = r.policy AND o.user_id = r.user_id
      WHERE r.policy = ${policy.name} AND r.user_id > ${afterUserId}
        AND r.tokens + greatest(0, extract(epoch FROM clock_timestamp() - r.last_refill_time))
          * coalesce(o.refill_per_second, ${policy.refillPerSecond}::float8) < coalesce(o.capacity, ${policy.capacity}::float8)
      ORDER BY r.user_id LIMIT ${limit}`.execute())
    return rows.map((r) => ({ userId: r.user_id, snapshot: { tokens: r.tokens, atMs: Number(r.at_ms) } }))
  }

  /** Any round trip off the request path (admin, hand-back, overrides), bounded by the statement timeout. */
  bounded<T> (operation: string, work: Promise<T>): Promise<T> {
    return withDeadline(work, this.#statementTimeoutMs, 'postgres', operation, () => this.#expired(operation, this.#statementTimeoutMs))
  }

  /**
   * A round trip passed its deadline: count it, and destroy the connections stuck waiting as
   * long, so they are not reused (postgres.js fails their queries and reconnects).
   */
  #expired (operation: string, ms: number): void {
    this.#metrics.storeDeadlines.inc({ store: 'postgres', operation })
    const destroyed = this.#sockets.destroyStalled(ms)
    if (this.#log.isLevelEnabled('debug')) this.#log.debug({ operation, deadline_ms: ms, connections_destroyed: destroyed }, 'PostgreSQL passed its deadline')
  }

  async close (): Promise<void> {
    await Promise.all([...new Set([this.sql, ...this.#deciders])].map(async (sql) => { await sql.end({ timeout: 5 }) }))
  }
}
