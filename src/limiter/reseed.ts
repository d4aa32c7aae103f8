/**
 * Re-seeding a Redis that holds none of the fleet's snapshots (docs/reliability.md, "Redis
 * restarted empty"). Redis takes a bucket over from its snapshot when PostgreSQL fails; a bucket
 * with no snapshot it starts full. After a restart that loses its data, every caller not decided
 * since would be refunded by the next PostgreSQL outage. So when Redis (re)connects, a marker key
 * tells whether it holds the fleet's snapshots; if not, one gateway claims the work, writes a
 * snapshot for every bucket PostgreSQL holds spent (full ones need none: a miss starts full),
 * then sets the marker.
 *
 * Redis losing data during a run (a restart, a Cluster shard's) fails it: each shard records the
 * run while it writes, and gets its marker only if that record survived (stores/redis/reseed-marks.ts).
 *
 * Safe against decisions running meanwhile: a snapshot carries its row's stamp and Redis keeps
 * the newer one (scripts.ts WRITE), so a page read before a decision cannot overwrite it; a
 * bucket Redis owns by then is charged nothing.
 */
import type { Policy } from '../core/domain.ts'
import type { DecidingStore, SnapshotCache } from '../core/ports.ts'
import { fullRefillSeconds } from '../core/token-bucket.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'

export interface ReseedOptions<P extends Policy> {
  /** The policies whose buckets Redis may take over (strict token buckets), as configured now. */
  readonly policies: () => Iterable<P>
  /** The policy as it applies to one caller (an override's numbers, and its cache name). */
  readonly effective: (policy: P, userId: string) => Policy
  /** This gateway's name in the claim. */
  readonly owner: string
  readonly metrics: Metrics
  readonly log: Logger
  /** Rows per page. Default 1,000. */
  readonly pageSize?: number
  /** How long a claim lasts unless renewed (once per page). Default 30 s. */
  readonly claimMs?: number
  /** The next try after a failure, or while another gateway holds the claim. Default 5 s. */
  readonly retryMs?: number
  /**
   * The next check after one that found the marker (or set it): a Redis that lost its data
   * without dropping the connection (FLUSHALL, the marker evicted) is noticed within it. Default 30 s.
   */
  readonly checkMs?: number
}

export type ReseedOutcome = 'done' | 'seeded' | 'busy' | 'unavailable' | 'failed'

export class Reseed<P extends Policy> {
  readonly #store: DecidingStore
  readonly #cache: SnapshotCache
  readonly #o: ReseedOptions<P>
  readonly #pageSize: number
  readonly #claimMs: number
  readonly #retryMs: number
  readonly #checkMs: number
  #running: Promise<ReseedOutcome> | null = null
  #again = false
  #retry: NodeJS.Timeout | null = null
  #failing = false
  #closed = false

  constructor (store: DecidingStore, cache: SnapshotCache, options: ReseedOptions<P>) {
    this.#store = store
    this.#cache = cache
    this.#o = options
    this.#pageSize = options.pageSize ?? 1_000
    this.#claimMs = options.claimMs ?? 30_000
    this.#retryMs = options.retryMs ?? 5_000
    this.#checkMs = options.checkMs ?? 30_000
  }

  /** Starts listening for reconnections and checks once now: that check's outcome. */
  async start (): Promise<ReseedOutcome> {
    this.#cache.onReady(() => { void this.run() })
    return await this.run()
  }

  /**
   * Checks the marker and re-seeds if it is absent. One run at a time: asked during a run, it
   * checks again after it (the reconnection may have come after the marker was read).
   */
  async run (): Promise<ReseedOutcome> {
    if (this.#running !== null) {
      this.#again = true
      return await this.#running
    }
    if (this.#retry !== null) clearTimeout(this.#retry)
    this.#retry = null
    this.#running = this.#attempt()
    let outcome: ReseedOutcome
    try {
      outcome = await this.#running
    } finally {
      this.#running = null
    }
    if (this.#closed) return outcome
    if (this.#again) {
      this.#again = false
      return await this.run()
    }
    // A claim held elsewhere may be a dead gateway's; 'unavailable' may be the circuit breaker
    // on a connection that never drops (no reconnection to wait for).
    const next = outcome === 'failed' || outcome === 'busy' || outcome === 'unavailable' ? this.#retryMs : this.#checkMs
    this.#retry = setTimeout(() => { void this.run() }, next)
    this.#retry.unref()
    return outcome
  }

  async #attempt (): Promise<ReseedOutcome> {
    const { owner, log, metrics } = this.#o
    const claim = await this.#cache.claimReseed(owner, this.#claimMs)
    if (claim !== 'claimed') return claim
    const started = Date.now()
    let written = 0
    try {
      for (const policy of this.#o.policies()) {
        let after = ''
        for (;;) {
          const page = await this.#store.spentBuckets(policy, after, this.#pageSize)
          // One page in Redis before the next is read: memory stays one page.
          if (page.length > 0) {
            await this.#cache.seed(page.map(({ userId, snapshot }) => {
              const p = this.#o.effective(policy, userId)
              return { key: this.#cache.key(p.cacheName ?? p.name, userId), snapshot, ttlSeconds: fullRefillSeconds(p) }
            }))
          }
          written += page.length
          metrics.reseededBuckets.inc(page.length)
          if (page.length < this.#pageSize) break
          after = page[page.length - 1]!.userId
          const renewed = await this.#cache.renewReseed(owner, this.#claimMs)
          if (renewed !== 'claimed') throw new Error(`lost the re-seed's claim (${renewed}): Redis may have lost what was written`)
        }
      }
      if (!await this.#cache.endReseed(owner, true)) throw new Error('a Redis shard lost its data during the re-seed')
    } catch (err) {
      metrics.reseeds.inc({ result: 'failed' })
      await this.#cache.endReseed(owner, false).catch(() => {})
      // Logged once per run of failures (PostgreSQL down is logged as its own outage).
      if (!this.#failing) log.warn({ err, buckets: written }, `re-seeding Redis failed; trying again in ${this.#retryMs} ms`)
      this.#failing = true
      return 'failed'
    }
    this.#failing = false
    metrics.reseeds.inc({ result: 'done' })
    // A first start on an empty Redis writes nothing: not worth a line.
    log[written > 0 ? 'info' : 'debug']({ buckets: written, ms: Date.now() - started },
      'Redis, or one of its Cluster shards, held no snapshots of this fleet (restarted empty, flushed, or never seeded): re-seeded from PostgreSQL\'s spent buckets')
    return 'done'
  }

  close (): void {
    this.#closed = true
    if (this.#retry !== null) clearTimeout(this.#retry)
    this.#retry = null
  }
}
