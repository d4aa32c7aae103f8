/**
 * Redis, a read-first cache of bucket snapshots in front of PostgreSQL (the SnapshotCache
 * port). Best effort by construction: no method on the request path throws, a slow or failing
 * Redis reads as `error` or `skipped`, and a circuit breaker stops paying the timeout on every
 * request while Redis is failing.
 *
 * On one server (or Sentinel's master), the reads and the snapshot writes of one turn of the event
 * loop are coalesced: one MGET, one WRITE_MANY script call, instead of a command per request
 * (docs/performance.md); a lone request's write waits for the next read (SNAPSHOT_WRITE_HOLD_MS).
 * On a Cluster, where the buckets' keys live in different slots, each goes alone, and ioredis
 * pipelines them per node.
 */
import type { Config } from '../../config/schema.ts'
import type { BucketSnapshot } from '../../core/domain.ts'
import { CACHE_ERROR, CACHE_MISS, CACHE_SKIPPED, HANDING_BACK, REDIS_OWNED, type CachedSnapshot, type CacheRead, type ReseedClaim, type ReseedRenewal, type SeedSnapshot, type SnapshotCache } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { Batcher } from '../batcher.ts'
import { CircuitBreaker } from '../breaker.ts'
import type { StoreHealth } from '../health.ts'
import { MAX_UNSENT, UnsentSnapshots } from '../unsent-snapshots.ts'
import { withDeadline } from '../deadline.ts'
import { createRedisClient, isCluster } from './client.ts'
import { allSeeded, claim, onShards, releaseClaim, reseedShards, type ReseedShard } from './reseed-marks.ts'
import { defineScripts, ownerOf, type ScriptedRedis } from './scripts.ts'

interface SnapshotWrite { readonly key: string, readonly snapshot: BucketSnapshot, readonly ttlSeconds: number, readonly charge: number }

/** Most keys in one MGET or one WRITE_MANY call. */
const MAX_KEYS_PER_COMMAND = 256

/**
 * How long a snapshot write made while no read is queued or in flight (one request at a time)
 * waits for the next read (single server), to travel in its pipeline: otherwise a lone request
 * costs two Redis round trips, the read alongside PostgreSQL's decision and the write after it,
 * each a wake-up of Redis and of the gateway. Under load, writes leave on the next turn of the
 * loop as before. A write waits at most this long when no read comes; the take-over fence
 * counts it (server.ts), and `settled()` sends what waits at once.
 */
export const SNAPSHOT_WRITE_HOLD_MS = 5

export class RedisSnapshotCache implements SnapshotCache {
  readonly client: ScriptedRedis | null
  readonly health: StoreHealth
  readonly #connectTimeoutMs: number
  readonly #prefix: string
  readonly #metrics: Metrics
  #closing = false
  readonly #readyListeners: Array<() => void> = []
  #lastWrite: Promise<void> = Promise.resolve()
  readonly #unsent = new UnsentSnapshots(MAX_UNSENT)
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })
  readonly #writeHoldMs: number
  /** A read about to leave at once (an MGET) is sending the writes waiting: they leave at once too. */
  #directWrites = false
  /** Coalescing, for a single server; null on a Cluster. */
  readonly #reads: Batcher<string, string | null> | null = null
  readonly #writes: Batcher<SnapshotWrite, void> | null = null
  /** The shards of the re-seed this gateway holds the claim of (reseed-marks.ts). */
  #reseedShards: ReseedShard[] | null = null

  /** `health` is shared with the Redis decider: one outage, logged once. `writeHoldMs`: tests. */
  constructor (config: Config['redis'], health: StoreHealth, metrics: Metrics, writeHoldMs = SNAPSHOT_WRITE_HOLD_MS) {
    this.#prefix = config.keyPrefix
    this.#writeHoldMs = writeHoldMs
    this.#metrics = metrics
    this.#connectTimeoutMs = config.connectTimeoutMs
    this.health = health
    if (!config.enabled) {
      metrics.storeDisabled('redis')
      this.client = null
      return
    }
    this.client = defineScripts(createRedisClient(config.url, {
      // Fail fast: a cache that queues or retries commands only adds latency.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: config.commandTimeoutMs,
      connectTimeout: config.connectTimeoutMs,
      enableAutoPipelining: true,
      // TCP keep-alive: a dead peer is noticed on an idle connection too. Every command is
      // bounded by commandTimeout, so a server that accepts and never answers costs at most that.
      keepAlive: 10_000,
      // Already one per turn of the loop (below); another turn would only add latency.
      autoPipeliningIgnoredCommands: ['mget', 'rlWriteMany'],
      lazyConnect: true,
      retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2_000)
    }))
    // ioredis emits 'error' on every failed reconnect; StoreHealth logs only the transition.
    // (While closing, a quit racing the last commands is not an outage.)
    this.client.on('error', (err) => { if (!this.#closing) this.health.failed(err) })
    this.client.on('ready', () => {
      this.#succeeded()
      for (const listener of this.#readyListeners) listener()
    })
    this.client.on('end', () => { if (!this.#closing) this.health.failed(new Error('connection closed')) })
    if (!isCluster(this.client)) {
      this.#reads = new Batcher((keys) => this.#readMany(keys), { maxSize: MAX_KEYS_PER_COMMAND, maxInFlight: 4, windowMs: 0 })
      this.#writes = new Batcher((items) => this.#writeMany(items), { maxSize: MAX_KEYS_PER_COMMAND, maxInFlight: 2, windowMs: 0 })
    }
  }

  /**
   * Connects, waiting at most twice the connect timeout (a Cluster's slot map, then its
   * nodes). Never throws: Redis is optional. Bounded here, not by ioredis: a Cluster's
   * `connect()` stays pending for as long as its nodes answer without a formed cluster, and
   * start-up would hang on it.
   */
  async start (): Promise<void> {
    if (this.client === null) return
    try {
      await withDeadline(this.client.connect(), 2 * this.#connectTimeoutMs, 'redis', 'connect', () => {})
    } catch (err) {
      // Recorded once (StoreHealth logs transitions); ioredis keeps connecting in the background.
      this.health.failed(err)
    }
  }

  key (cacheName: string, userId: string): string {
    return bucketKey(this.#prefix, cacheName, userId)
  }

  async read (key: string): Promise<CacheRead> {
    const client = this.#usable()
    if (client === null) {
      this.#metrics.cacheLookups.inc({ result: 'skipped' })
      return CACHE_SKIPPED
    }
    let value: string | null
    if (this.#reads !== null) {
      try {
        value = await this.#reads.submit(key)
      } catch {
        this.#metrics.cacheLookups.inc({ result: 'error' }) // the round trip's failure is recorded once, in #readMany
        return CACHE_ERROR
      }
    } else {
      this.#metrics.storeOperations.inc({ store: 'redis', operation: 'get' })
      try {
        value = await client.get(key)
      } catch (err) {
        this.#failed('get', err)
        this.#metrics.cacheLookups.inc({ result: 'error' })
        return CACHE_ERROR
      }
      this.#succeeded()
    }
    if (value !== null) {
      const owner = ownerOf(value)
      if (owner !== 'postgres') {
        const result = owner === 'redis' ? REDIS_OWNED : HANDING_BACK
        this.#metrics.cacheLookups.inc({ result: result.kind })
        return result
      }
    }
    const snapshot = value === null ? null : decode(value)
    this.#metrics.cacheLookups.inc({ result: snapshot === null ? 'miss' : 'hit' })
    return snapshot ?? CACHE_MISS
  }

  /** Fire and forget, never on the response's path (scripts.ts WRITE: newer wins, Redis-owned charged). */
  write (key: string, snapshot: BucketSnapshot, ttlSeconds: number, charge: number): void {
    const client = this.client
    if (client === null) return
    // Kept for when Redis answers again (#succeeded): Redis may take the bucket over from it.
    if (client.status !== 'ready' || this.#breaker.open) {
      this.#keep(key, snapshot, ttlSeconds, charge)
      return
    }
    if (this.#writes !== null) {
      const hold = this.#reads!.idle ? this.#writeHoldMs : 0
      this.#lastWrite = this.#writes.submit({ key, snapshot, ttlSeconds, charge }, hold).catch(() => {}) // recorded in #writeMany
      return
    }
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'set' })
    this.#lastWrite = client.rlWrite(key, encode(snapshot), ttlSeconds, charge).then(() => {}, (err: unknown) => {
      this.#keep(key, snapshot, ttlSeconds, charge)
      this.#failed('set', err)
    })
  }

  #keep (key: string, snapshot: BucketSnapshot, ttlSeconds: number, charge: number): void {
    this.#unsent.add(key, snapshot, ttlSeconds, charge)
    this.#metrics.redisUnsent.set(this.#unsent.size)
  }

  /**
   * Resolves once the snapshot writes made so far have been applied or have failed (each is
   * bounded by the command timeout; one waiting for a read is sent now). On one server they
   * travel in order on one connection, so the last one answering means all have; on a Cluster
   * this waits for the last one only.
   */
  async settled (): Promise<void> {
    this.#writes?.flushNow()
    await this.#lastWrite
  }

  /** One round trip for every read waiting (single server). */
  async #readMany (keys: string[]): Promise<Array<string | null>> {
    const client = this.client!
    // The writes waiting go first (SNAPSHOT_WRITE_HOLD_MS): a lone GET and a lone write both
    // wait for ioredis's pipeline of the turn, in order; an MGET leaves at once, so the writes
    // before it must too (#writeMany).
    this.#directWrites = keys.length > 1
    this.#writes!.flushNow()
    this.#directWrites = false
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'get' })
    let values: Array<string | null>
    try {
      values = keys.length === 1 ? [await client.get(keys[0]!)] : await client.mget(keys)
    } catch (err) {
      this.#failed('get', err)
      throw err
    }
    this.#succeeded()
    return values
  }

  /** One round trip for every snapshot write waiting, applied in order (single server). */
  async #writeMany (items: SnapshotWrite[]): Promise<void[]> {
    const client = this.client!
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'set' })
    try {
      // RL_WRITE is auto-pipelined (sent on the next turn), WRITE_MANY is not (sent now).
      if (items.length === 1 && !this.#directWrites) {
        const w = items[0]!
        await client.rlWrite(w.key, encode(w.snapshot), w.ttlSeconds, w.charge)
      } else {
        await client.rlWriteMany(items.length, ...writeManyArgs(items))
      }
    } catch (err) {
      // It may have landed (a late reply): written again, a snapshot changes nothing and a
      // charge to a Redis-owned bucket counts twice, towards fewer tokens.
      for (const w of items) this.#keep(w.key, w.snapshot, w.ttlSeconds, w.charge)
      this.#failed('set', err)
      throw err
    }
    return new Array<void>(items.length)
  }

  /** The client, if Redis may be used now: connected and not skipped by the circuit breaker. */
  #usable (): ScriptedRedis | null {
    const client = this.client
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return null
    return client
  }

  #succeeded (): void {
    this.#breaker.success()
    this.health.succeeded()
    if (this.#unsent.size === 0) return
    const held = this.#unsent.take()
    this.#metrics.redisUnsent.set(0)
    for (const u of held) this.write(u.key, u.snapshot, u.ttlSeconds, u.charge)
  }

  /** Removes a snapshot; used when a bucket is raised (reset), where a stale one would be wrong. */
  async remove (key: string): Promise<void> {
    if (this.client === null) return
    this.#unsent.forget(key)
    this.#metrics.redisUnsent.set(this.#unsent.size)
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'del' })
    try {
      // And the bucket's write-behind key (write-behind-redis.ts): same hash tag, same slot.
      await this.client.del(key, this.#prefix + 'wb' + key.slice(this.#prefix.length))
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'del' })
      throw err
    }
  }

  async ping (): Promise<'up' | 'down' | 'disabled'> {
    if (this.client === null) return 'disabled'
    if (this.client.status !== 'ready') return 'down'
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'ping' })
    try {
      await this.client.ping()
      return 'up'
    } catch {
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'ping' })
      return 'down'
    }
  }

  onReady (listener: () => void): void {
    this.#readyListeners.push(listener)
  }

  async claimReseed (owner: string, ttlMs: number): Promise<ReseedClaim> {
    const client = this.#usable()
    if (client === null) return 'unavailable'
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'reseed' })
    try {
      const shards = reseedShards(client, this.#prefix)
      if (shards === null) return 'unavailable'
      if (await allSeeded(client, shards)) return 'seeded'
      const taken = await claim(client, this.#prefix, owner, ttlMs, false)
      if (taken !== 'claimed') return 'busy'
      // The shards as they are now: a master added later is found unmarked by the next check.
      this.#reseedShards = shards
      await onShards(client, shards, owner, ttlMs, 'begin')
      return 'claimed'
    } catch (err) {
      this.#failed('reseed', err)
      return 'unavailable'
    }
  }

  async renewReseed (owner: string, ttlMs: number): Promise<ReseedRenewal> {
    const client = this.#usable()
    if (client === null || this.#reseedShards === null) return 'unavailable'
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'reseed' })
    try {
      if (await claim(client, this.#prefix, owner, ttlMs, true) !== 'claimed') return 'lost'
      return await onShards(client, this.#reseedShards, owner, ttlMs, 'renew') ? 'claimed' : 'lost'
    } catch (err) {
      this.#failed('reseed', err)
      return 'unavailable'
    }
  }

  async seed (snapshots: readonly SeedSnapshot[]): Promise<void> {
    const client = this.#usable()
    if (client === null) throw new Error('Redis is not usable now')
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'set' })
    try {
      if (this.#writes === null) {
        // A Cluster: one slot per call, pipelined per node by ioredis.
        await Promise.all(snapshots.map(async (w) => await client.rlWrite(w.key, encode(w.snapshot), w.ttlSeconds, 0)))
        return
      }
      for (let from = 0; from < snapshots.length; from += MAX_KEYS_PER_COMMAND) {
        const part = snapshots.slice(from, from + MAX_KEYS_PER_COMMAND).map((w) => ({ ...w, charge: 0 }))
        await client.rlWriteMany(part.length, ...writeManyArgs(part))
      }
    } catch (err) {
      this.#failed('set', err)
      throw err
    }
  }

  async endReseed (owner: string, done: boolean): Promise<boolean> {
    const client = this.client
    const shards = this.#reseedShards
    if (client === null || shards === null) return false
    this.#reseedShards = null
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'reseed' })
    try {
      const marked = await onShards(client, shards, owner, 0, done ? 'end' : 'abort')
      await releaseClaim(client, this.#prefix, owner)
      return done && marked
    } catch (err) {
      this.#failed('reseed', err)
      throw err
    }
  }

  #failed (operation: string, err: unknown): void {
    this.#metrics.storeErrors.inc({ store: 'redis', operation })
    this.#breaker.failure(Date.now())
    this.health.failed(err)
  }

  async close (): Promise<void> {
    if (this.client === null) return
    this.#closing = true
    // A write still waiting for its turn goes before the quit, not after it.
    await this.settled()
    try {
      await this.client.quit()
    } catch {
      this.client.disconnect()
    }
  }
}

/** WRITE_MANY's arguments after the key count: the keys, then snapshot, ttl and charge per key. */
function writeManyArgs (items: readonly SnapshotWrite[]): Array<string | number> {
  const n = items.length
  const args = new Array<string | number>(4 * n)
  for (let i = 0; i < n; i++) {
    const w = items[i]!
    args[i] = w.key
    args[n + 3 * i] = encode(w.snapshot)
    args[n + 3 * i + 1] = w.ttlSeconds
    args[n + 3 * i + 2] = w.charge
  }
  return args
}

export function encode (s: BucketSnapshot): string {
  return `${s.tokens}|${s.atMs}`
}

export function decode (value: string): CachedSnapshot | null {
  const bar = value.indexOf('|')
  if (bar < 0) return null
  const tokens = Number(value.slice(0, bar))
  const atMs = Number(value.slice(bar + 1))
  return Number.isFinite(tokens) && Number.isFinite(atMs) ? { kind: 'snapshot', tokens, atMs } : null
}

/** One hash tag per bucket: every key of a bucket lives in one Redis Cluster slot. */
export function bucketKey (prefix: string, cacheName: string, userId: string): string {
  return `${prefix}{${cacheName}:${userId}}`
}
