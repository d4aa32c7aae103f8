/**
 * The stores as the decision flow sees them. src/limiter depends on these interfaces only;
 * src/stores/postgres and src/stores/redis implement them, and src/stores/memory implements
 * them in memory for fast tests. docs/design.md explains the protocol behind them.
 */
import type { BucketSnapshot, Policy } from './domain.ts'

/** One bucket's charge: `cost` tokens of `policy`'s bucket for `userId`. */
export interface BucketRequest {
  readonly policy: Policy
  readonly userId: string
  readonly cost: number
}

export interface StoreDecision {
  /** The request was allowed (with several buckets: every one of them could pay, and paid). */
  readonly allowed: boolean
  /** This bucket alone could pay its cost (false: one of the policies that refused). */
  readonly canPay: boolean
  /** The bucket after the decision, on the database clock. */
  readonly snapshot: BucketSnapshot
  /** The row was created by this request. */
  readonly created: boolean
}

export interface BucketPeek {
  readonly snapshot: BucketSnapshot | null
  /** The deciding store's clock when it was read. */
  readonly nowMs: number
}

/** A bucket PostgreSQL holds spent (not full now): what a Redis restarted empty needs again. */
export interface SpentBucket {
  readonly userId: string
  /** The row as stored (database clock). */
  readonly snapshot: BucketSnapshot
}

/** A bucket Redis decided while PostgreSQL was down, waiting to be handed back. */
export interface OwnedBucket {
  /** The policy's name: PostgreSQL's row key. */
  readonly policy: string
  /** The name its cache key is made from (Policy.cacheName, else the name). */
  readonly cacheName: string
  readonly userId: string
  readonly capacity: number
  readonly refillPerSecond: number
}

/**
 * PostgreSQL, the source of truth: decides every allowance while it answers. Every method
 * rejects with StoreFailure when the store does not answer in time.
 */
export interface DecidingStore {
  /** Decides atomically (concurrent calls share one round trip: group commit). */
  decide (request: BucketRequest): Promise<StoreDecision>
  /**
   * Every batch slot is in flight: a decision asked now waits for one (so reading Redis first
   * costs it no latency, and lets the next batch grow).
   */
  readonly busy: boolean
  /**
   * Decides one request's buckets together, all or nothing, in the same transaction as the rest
   * of its batch: allowed only if each can pay, and then each is charged; otherwise none is.
   */
  decideGroup (requests: readonly BucketRequest[]): Promise<StoreDecision[]>
  /**
   * Gives each request's `cost` back to its bucket (a refund: the upstream failed, or a request
   * of several buckets was refused after some were charged), never above capacity. Returns the
   * buckets after the refund (database clock).
   */
  refund (requests: readonly BucketRequest[]): Promise<BucketSnapshot[]>
  peek (policy: string, userId: string): Promise<BucketPeek>
  /** Forgets a bucket (the caller starts full); true if there was one. */
  reset (policy: string, userId: string): Promise<boolean>
  ping (): Promise<void>
  /**
   * The hand-back's PostgreSQL half, in one transaction: lock the buckets' rows (in the global
   * key order every decision uses), call `takeOver` for their tokens in Redis now (null where
   * Redis no longer owns one), merge keeping the lower count, commit. Returns the merged
   * snapshots, null where nothing was merged.
   */
  handBack (buckets: readonly OwnedBucket[], takeOver: (buckets: readonly OwnedBucket[]) => Promise<ReadonlyArray<number | null>>): Promise<Array<BucketSnapshot | null>>
  /**
   * The buckets of `policy` that are not full now (under a caller's override of its numbers
   * where one is set), user ids after `afterUserId` in the store's order, at most `limit`: the
   * re-seed's pages (src/limiter/reseed.ts).
   */
  spentBuckets (policy: Policy, afterUserId: string, limit: number): Promise<SpentBucket[]>
}

/** A read of the snapshot cache: a snapshot, or why there is none. */
export type CacheRead = CachedSnapshot | CacheOutcome

export interface CachedSnapshot extends BucketSnapshot {
  readonly kind: 'snapshot'
}

export interface CacheOutcome {
  /**
   * miss: nothing cached; error: the read failed or timed out; skipped: not asked (disabled,
   * disconnected, circuit open); redis-owned: Redis decides this bucket (PostgreSQL was down);
   * handing-back: a gateway is merging it into PostgreSQL right now.
   */
  readonly kind: 'miss' | 'error' | 'skipped' | 'redis-owned' | 'handing-back'
}

// Shared instances: a read that finds no snapshot allocates nothing.
export const CACHE_MISS: CacheOutcome = Object.freeze({ kind: 'miss' })
export const CACHE_ERROR: CacheOutcome = Object.freeze({ kind: 'error' })
export const CACHE_SKIPPED: CacheOutcome = Object.freeze({ kind: 'skipped' })
export const REDIS_OWNED: CacheOutcome = Object.freeze({ kind: 'redis-owned' })
export const HANDING_BACK: CacheOutcome = Object.freeze({ kind: 'handing-back' })

/**
 * Redis as a read-first cache of PostgreSQL's snapshots. Best effort: nothing here throws on
 * the request path; a slow or failing Redis reads as `error` or `skipped`.
 */
export interface SnapshotCache {
  /** The cache key of a bucket (one hash tag per bucket: one Redis Cluster slot). */
  key (cacheName: string, userId: string): string
  read (key: string): Promise<CacheRead>
  /**
   * Stores the snapshot PostgreSQL just decided, off the response path. `charge` is the cost
   * PostgreSQL granted (0 for a refusal): where Redis owns the bucket the snapshot is not
   * stored and the charge is applied to Redis's state instead, so neither store's spending is lost.
   * A write Redis does not take now is kept and written when it answers again.
   */
  write (key: string, snapshot: BucketSnapshot, ttlSeconds: number, charge: number): void
  /**
   * Resolves when the snapshot writes this process has sent so far are applied (or failed):
   * Redis must not take a bucket over while this process's last PostgreSQL decision of it is
   * still on its way there (the decider has a connection of its own). Never rejects.
   */
  settled (): Promise<void>
  /** Removes a snapshot, and the bucket's write-behind state (a bucket was raised: reset, override); throws when Redis fails. */
  remove (key: string): Promise<void>
  /** Readiness: 'disabled' when no Redis is configured. */
  ping (): Promise<'up' | 'down' | 'disabled'>
  /**
   * The re-seed's claim (src/limiter/reseed.ts), `owner` naming this gateway: `seeded` when
   * every shard's marker says it holds the fleet's snapshots since it started; `claimed` when
   * this gateway is to write them now (for `ttlMs`); `busy` when another gateway holds the
   * claim; `unavailable` when Redis cannot be asked.
   */
  claimReseed (owner: string, ttlMs: number): Promise<ReseedClaim>
  /**
   * Extends `owner`'s claim by `ttlMs` between pages: `lost` when the claim, or a shard's record
   * that the re-seed is writing there, is gone (Redis lost data meanwhile: what was written may
   * be gone too, so the run must start again).
   */
  renewReseed (owner: string, ttlMs: number): Promise<ReseedRenewal>
  /** Writes the re-seed's snapshots (newer wins, as `write`); resolves once all are applied, rejects when any failed. */
  seed (snapshots: readonly SeedSnapshot[]): Promise<void>
  /**
   * Ends `owner`'s claim. `done`: sets each shard's marker, where the shard still records this
   * re-seed; false when one did not (it lost its data meanwhile: the run must start again).
   * Throws when Redis fails.
   */
  endReseed (owner: string, done: boolean): Promise<boolean>
  /** `listener` runs each time Redis (re)connects: a restarted Redis may hold no snapshots at all. */
  onReady (listener: () => void): void
}

export type ReseedClaim = 'seeded' | 'claimed' | 'busy' | 'unavailable'
export type ReseedRenewal = 'claimed' | 'lost' | 'unavailable'

/** A bucket's snapshot written by the re-seed. */
export interface SeedSnapshot { readonly key: string, readonly snapshot: BucketSnapshot, readonly ttlSeconds: number }

/** What Redis answered when asked to decide. */
export type RedisVerdict = RedisDecided | RedisNotDecided | RedisTakingOver

export interface RedisDecided {
  readonly kind: 'decided'
  readonly allowed: boolean
  /** Tokens left, on the Redis clock. */
  readonly tokens: number
}

export interface RedisNotDecided {
  /** handing-back: merged into PostgreSQL right now (ask PostgreSQL); unavailable: Redis cannot decide. */
  readonly kind: 'handing-back' | 'unavailable'
}

/**
 * Redis is taking the bucket over and decides it only after the take-over fence: allowances
 * PostgreSQL granted just before are still on their way to Redis. Ask again in `waitMs`.
 */
export interface RedisTakingOver {
  readonly kind: 'taking-over'
  readonly waitMs: number
}

/** Redis's decision of one request's buckets, all or nothing: charged all (`allowed`) or none. */
export interface RedisGroupDecided {
  readonly kind: 'decided'
  readonly allowed: boolean
  /** Per bucket, in the request's order: whether it could pay, and its tokens (after the charge if charged). */
  readonly buckets: ReadonlyArray<{ readonly canPay: boolean, readonly tokens: number }>
}

/** As RedisVerdict, for several buckets: handing-back or taking-over if any of them is. */
export type RedisGroupVerdict = RedisGroupDecided | RedisNotDecided | RedisTakingOver

export const REDIS_HANDING_BACK: RedisNotDecided = Object.freeze({ kind: 'handing-back' })
export const REDIS_UNAVAILABLE: RedisNotDecided = Object.freeze({ kind: 'unavailable' })

/**
 * Redis as the deciding store while PostgreSQL is down (an atomic script on the Redis clock),
 * and the Redis half of the hand-back. Buckets it decides become Redis-owned until handed back.
 */
export interface RedisDecider {
  /** A Redis is configured. */
  readonly enabled: boolean
  /** Configured and connected now. */
  readonly available: boolean
  /**
   * `dbNowMs` (this gateway's estimate of the database clock) projects a PostgreSQL snapshot
   * Redis takes over; `force` takes a bucket back from a hand-back in progress.
   */
  decide (request: BucketRequest, dbNowMs: number, force: boolean): Promise<RedisVerdict>
  /**
   * One request's buckets in one atomic step (as `decide` for each, but charged all or none);
   * null where this Redis cannot (a Cluster: the buckets live in different slots; or two of
   * them share a key): decide them one by one.
   */
  decideGroup (requests: readonly BucketRequest[], dbNowMs: number, force: boolean): Promise<RedisGroupVerdict | null>
  /** Gives `request.cost` back to a bucket Redis charged, never above capacity; false when it could not (not Redis-owned now, or Redis failed). */
  refund (request: BucketRequest): Promise<boolean>
  /** Some of the Redis-owned buckets from `cursor` ('0' starts; '0' returned: done). */
  owned (cursor: string, count: number): Promise<{ cursor: string, buckets: OwnedBucket[] }>
  ownedCount (): Promise<number>
  /** Hand-back step 1 (rows locked): marks each bucket as being handed back; its tokens now, or null where Redis does not own it. */
  markHandingBack (buckets: readonly OwnedBucket[]): Promise<Array<number | null>>
  /** Hand-back step 2 (merge committed): each bucket becomes a snapshot of its merged row. */
  handedBack (buckets: readonly OwnedBucket[], snapshots: ReadonlyArray<BucketSnapshot | null>): Promise<void>
}

/** What Redis answered when asked for a concurrency slot. */
export type LeaseVerdict =
  | { readonly kind: 'acquired', readonly inFlight: number }
  | { readonly kind: 'refused', readonly inFlight: number }
  | { readonly kind: 'unavailable' }

/**
 * Concurrency slots as leases in Redis (one sorted set per caller and policy: member = lease
 * id, score = expiry on the Redis clock). A lease lives `leaseMs` unless renewed, so a gateway
 * that dies without releasing its slots blocks its callers at most that long.
 */
export interface LeaseStore {
  readonly enabled: boolean
  /** Takes a slot if fewer than `limit` live leases exist. Never throws. */
  acquire (policy: string, userId: string, limit: number, leaseId: string, leaseMs: number): Promise<LeaseVerdict>
  /** Extends live leases by `leaseMs` (the ones still in flight). Never throws. */
  renew (leases: ReadonlyArray<{ readonly policy: string, readonly userId: string, readonly leaseId: string }>, leaseMs: number): Promise<void>
  /** Frees a slot. Never throws. */
  release (policy: string, userId: string, leaseId: string): Promise<void>
}

/** What Redis answered in write-behind mode (it decides every request there). */
export type WriteBehindVerdict = WriteBehindDecided | WriteBehindNotDecided

export interface WriteBehindDecided {
  readonly kind: 'decided'
  readonly allowed: boolean
  /** Tokens left, on the Redis clock. */
  readonly tokens: number
  /** When Redis decided (its clock): of two decisions of one bucket the later one is the newer state. */
  readonly atMs: number
  /** This call seeded the bucket from PostgreSQL's state (seedAndDecide, or decideGroup with seeds). */
  readonly seeded: boolean
}

export interface WriteBehindNotDecided {
  /** miss: Redis does not hold the bucket (load it from PostgreSQL); unavailable: Redis cannot decide. */
  readonly kind: 'miss' | 'unavailable'
}

/**
 * What Redis answered for several buckets of one request, decided together (all or nothing):
 * `decided` with one verdict per bucket, every one charged (`charged`) or none (some cannot pay;
 * a verdict that could pay is `allowed` but uncharged, its tokens as they stand); `miss` with the
 * buckets Redis does not hold (load them, then seed; nothing was written); or `unavailable`.
 */
export type WriteBehindGroupVerdict =
  | { readonly kind: 'decided', readonly charged: boolean, readonly buckets: readonly WriteBehindDecided[] }
  | { readonly kind: 'miss', readonly missing: readonly boolean[] }
  | typeof WB_UNAVAILABLE

export const WB_MISS: WriteBehindNotDecided = Object.freeze({ kind: 'miss' })
export const WB_UNAVAILABLE: WriteBehindNotDecided & { readonly kind: 'unavailable' } = Object.freeze({ kind: 'unavailable' })

/**
 * Redis deciding every request of a write-behind policy: one atomic script on the Redis clock,
 * one round trip. Its keys are apart from the snapshot cache's (same hash tag: same Cluster
 * slot), so the two modes never read each other's values. Nothing here throws on the request path.
 */
export interface WriteBehindRedis {
  /** Configured and connected now (a write-behind decision can be tried). */
  readonly available: boolean
  /** Decides if Redis holds the bucket; `miss` otherwise (nothing is written). */
  decide (request: BucketRequest): Promise<WriteBehindVerdict>
  /**
   * Seeds the bucket with `tokens` (PostgreSQL's state, refilled to the database's now) only if
   * Redis still does not hold it (another gateway may have seeded it meanwhile), then decides.
   */
  seedAndDecide (request: BucketRequest, tokens: number): Promise<WriteBehindVerdict>
  /**
   * Decides one request's buckets at one instant, all or nothing; `seeds` (null: none) seed the
   * missing ones as `seedAndDecide` does. Null where one step cannot hold them (a Cluster: one
   * slot per bucket; a bucket named twice): the caller decides them one by one.
   */
  decideGroup (requests: readonly BucketRequest[], seeds: ReadonlyArray<number | null>): Promise<WriteBehindGroupVerdict | null>
  /**
   * Lowers buckets Redis holds to PostgreSQL's state where that has fewer tokens (the min-merge
   * before Redis decides again after PostgreSQL decided without it); absent buckets stay absent
   * (a miss loads PostgreSQL's state anyway). Rejects when Redis fails.
   */
  lower (requests: readonly BucketRequest[], tokens: ReadonlyArray<number | null>): Promise<void>
  /**
   * Gives a charged bucket its cost back, never above capacity: its new state, or null when
   * Redis no longer holds the bucket (nothing is given back) or cannot be reached.
   */
  refund (request: BucketRequest): Promise<{ readonly tokens: number, readonly atMs: number } | null>
}

/** One bucket's latest write-behind state, to be written to PostgreSQL. */
export interface SyncEntry {
  readonly policy: Policy
  readonly userId: string
  readonly tokens: number
  /**
   * How long ago (gateway clock, at the flush) this state was known: the reply's arrival, which
   * is after Redis decided, so the row is stamped no earlier than the truth and gets no refill
   * it did not earn.
   */
  readonly ageMs: number
}

/**
 * PostgreSQL as the write-behind mode's durable copy: read on a Redis miss, written behind.
 * Every method rejects with StoreFailure when PostgreSQL does not answer in time.
 */
export interface BucketLedger {
  /**
   * Each bucket's tokens refilled to the database's now, or null where it has no row (a new
   * caller). Concurrent calls share one round trip.
   */
  load (request: BucketRequest): Promise<number | null>
  /**
   * Writes the states in one statement, merging so that no row is ever raised: the row and
   * the state are both refilled to the later of their two times and the lower count is kept
   * (src/core/write-behind-merge.ts). Missing rows are created. At most one entry per bucket.
   */
  sync (entries: readonly SyncEntry[]): Promise<void>
  /**
   * Whether PostgreSQL answers. After a failed flush the next one waits for this: a flush
   * queued in the driver while no connection is up would run whenever one is, with ages
   * measured long before (stamped too late: PostgreSQL would hold fewer tokens than the truth).
   */
  ping (): Promise<void>
}
