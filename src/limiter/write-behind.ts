/**
 * Write-behind: the latest state of every bucket this gateway decided in Redis, written to
 * PostgreSQL at most every `syncIntervalMs`, in one statement per flush (BucketLedger.sync,
 * which merges keeping the lower count: no flush ever raises a row). Memory is bounded by the
 * active buckets: one entry per bucket, replaced in place by each newer decision.
 *
 * A flush that fails keeps its entries: each goes back unless a newer state of its bucket
 * arrived meanwhile, and the next tick retries. So nothing is lost while PostgreSQL is down,
 * and PostgreSQL's copy of a bucket is at most one interval (plus a failed flush's retry)
 * behind Redis: the most a caller can be allowed again if Redis loses the bucket.
 *
 * `PendingSyncs` is the bookkeeping alone (no timers, time is a parameter: unit-tested with a
 * controlled clock); `WriteBehindSync` adds the timer, the metrics and the shutdown flush.
 */
import type { Policy } from '../core/domain.ts'
import type { BucketLedger, SyncEntry } from '../core/ports.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'

interface Pending {
  policy: Policy
  userId: string
  tokens: number
  /** When Redis decided (Redis clock): orders two states of one bucket. */
  atMs: number
  /** When this gateway learnt the state (its clock): the age sent with the flush. */
  seenMs: number
  /** When the oldest change not yet in PostgreSQL was learnt. */
  firstMs: number
}

export interface Batch {
  readonly entries: readonly Pending[]
  /** SyncEntry per entry, aged at the moment the batch was taken. */
  readonly sync: readonly SyncEntry[]
}

export class PendingSyncs {
  #map = new Map<string, Pending>()
  #pendingOldest = Infinity
  #inFlightOldest = Infinity

  get size (): number { return this.#map.size }

  /**
   * A decision's state. An older state than the one kept (replies of one bucket may be handled
   * out of order on a Cluster) is dropped: at equal times, fewer tokens is the later one.
   */
  record (policy: Policy, userId: string, tokens: number, atMs: number, nowMs: number): void {
    const id = policy.name + '\n' + userId
    const kept = this.#map.get(id)
    if (kept === undefined) {
      if (this.#map.size === 0 && nowMs < this.#pendingOldest) this.#pendingOldest = nowMs
      this.#map.set(id, { policy, userId, tokens, atMs, seenMs: nowMs, firstMs: nowMs })
      return
    }
    if (atMs < kept.atMs || (atMs === kept.atMs && tokens >= kept.tokens)) return
    kept.policy = policy
    kept.tokens = tokens
    kept.atMs = atMs
    kept.seenMs = nowMs
  }

  /** Everything pending, as one batch (the map starts afresh); null when nothing is pending. */
  take (nowMs: number): Batch | null {
    if (this.#map.size === 0) return null
    const entries = [...this.#map.values()]
    this.#map = new Map()
    this.#inFlightOldest = this.#pendingOldest
    this.#pendingOldest = Infinity
    // Key order, as every PostgreSQL statement takes its row locks (the SQL sorts again; this
    // keeps the arrays' order stable for the tests and the logs).
    entries.sort((a, b) => a.policy.name < b.policy.name ? -1 : a.policy.name > b.policy.name ? 1 : a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0)
    const sync = entries.map((e) => ({ policy: e.policy, userId: e.userId, tokens: e.tokens, ageMs: nowMs - e.seenMs }))
    return { entries, sync }
  }

  /** The batch was written. */
  done (): void {
    this.#inFlightOldest = Infinity
  }

  /** The batch failed: its entries come back, except where a newer state arrived meanwhile. */
  restore (batch: Batch): void {
    for (const e of batch.entries) {
      const id = e.policy.name + '\n' + e.userId
      const newer = this.#map.get(id)
      if (newer === undefined) this.#map.set(id, e)
      else newer.firstMs = Math.min(newer.firstMs, e.firstMs)
      if (e.firstMs < this.#pendingOldest) this.#pendingOldest = e.firstMs
    }
    this.#inFlightOldest = Infinity
  }

  /** A bucket was reset (admin): its pending state must not write the spent tokens back. */
  forget (cacheName: string, userId: string): void {
    for (const [id, e] of this.#map) if (e.userId === userId && (e.policy.cacheName ?? e.policy.name) === cacheName) this.#map.delete(id)
  }

  /** Milliseconds since the oldest change PostgreSQL does not have (pending or in flight); 0 if none. */
  oldestAgeMs (nowMs: number): number {
    const oldest = Math.min(this.#pendingOldest, this.#inFlightOldest)
    return oldest === Infinity ? 0 : Math.max(0, nowMs - oldest)
  }
}

export interface WriteBehindSyncOptions {
  readonly ledger: BucketLedger
  /** The live interval (a reload may change limits.syncIntervalMs). */
  readonly intervalMs: () => number
  readonly metrics: Metrics
  readonly log: Logger
  /** This host's monotonic clock, ms (tests control it). Default performance.now. */
  readonly now?: () => number
}

export class WriteBehindSync {
  readonly pending = new PendingSyncs()
  readonly #o: WriteBehindSyncOptions
  readonly #now: () => number
  #timer: NodeJS.Timeout | undefined
  #flushing: Promise<boolean> | undefined
  #failing = false
  #closed = false

  get ledger (): BucketLedger { return this.#o.ledger }

  constructor (options: WriteBehindSyncOptions) {
    this.#o = options
    this.#now = options.now ?? (() => performance.now())
  }

  /** Records a Redis decision's state (the request path: a map lookup, no allocation when the bucket is pending already). */
  record (policy: Policy, userId: string, tokens: number, atMs: number): void {
    this.pending.record(policy, userId, tokens, atMs, this.#now())
  }

  /** Starts the periodic flush (timers unref'd: they never keep the process alive). */
  start (): void {
    if (this.#closed || this.#timer !== undefined) return
    const tick = (): void => {
      this.#timer = setTimeout(() => { void this.flush().finally(() => { if (!this.#closed) tick() }) }, this.#o.intervalMs())
      this.#timer.unref()
    }
    tick()
  }

  /**
   * One flush: waits for one in flight, then writes what is pending. Resolves true when
   * everything taken was written (or nothing was pending); never rejects.
   */
  async flush (): Promise<boolean> {
    while (this.#flushing !== undefined) await this.#flushing
    this.#flushing = this.#flushOnce().finally(() => { this.#flushing = undefined })
    return await this.#flushing
  }

  async #flushOnce (): Promise<boolean> {
    const { metrics, log, ledger } = this.#o
    if (this.#failing && this.pending.size > 0) {
      // The last flush failed: send the next only over a connection that answers now, so it
      // runs now (its ages are measured now), not whenever the driver reconnects.
      try {
        await ledger.ping()
      } catch {
        metrics.syncFlushes.inc({ result: 'failed' })
        this.#gauges()
        return false
      }
    }
    const batch = this.pending.take(this.#now())
    if (batch !== null) {
      try {
        await ledger.sync(batch.sync)
        this.pending.done()
        metrics.syncFlushes.inc({ result: 'ok' })
        metrics.syncKeys.observe(batch.sync.length)
        if (this.#failing) {
          this.#failing = false
          log.warn({ keys: batch.sync.length }, 'write-behind flushes reach PostgreSQL again')
        }
      } catch (err) {
        this.pending.restore(batch)
        metrics.syncFlushes.inc({ result: 'failed' })
        if (!this.#failing) {
          this.#failing = true
          log.error({ err, keys: batch.sync.length }, 'write-behind flush failed; the buckets are kept and retried every sync interval')
        }
      }
    }
    this.#gauges()
    return batch === null || !this.#failing
  }

  #gauges (): void {
    this.#o.metrics.syncInterval.set(this.#o.intervalMs() / 1000)
    this.#o.metrics.syncPending.set(this.pending.size)
    this.#o.metrics.syncOldestAge.set(this.pending.oldestAgeMs(this.#now()) / 1000)
  }

  /** Shutdown: stops the timer and flushes what is left, once (a failure is logged, not retried). */
  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#timer = undefined
    const written = await this.flush()
    if (!written) this.#o.log.error({ keys: this.pending.size }, 'shutting down with write-behind state PostgreSQL does not have')
  }
}
