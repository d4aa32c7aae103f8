/**
 * Redis, a read-first cache of bucket snapshots in front of PostgreSQL. Best effort by
 * construction: no method throws, a slow or failing Redis reads as a miss, and a circuit
 * breaker stops paying the timeout on every request while Redis is failing.
 *
 * Reads and write-backs are coalesced per turn of the event loop: all reads waiting go as one
 * MGET, all write-backs as one script call, so a busy gateway pays one command per turn
 * rather than one per request (docs/performance.md). Both assume a standalone Redis, as the
 * client here is: on a Cluster, keys of different buckets live in different slots.
 */
import { Redis } from 'ioredis'
import type { Config } from '../config/schema.ts'
import type { BucketSnapshot } from '../domain.ts'
import type { Logger } from '../log.ts'
import type { Metrics } from '../metrics.ts'
import { Batcher } from './batcher.ts'
import { CircuitBreaker } from './breaker.ts'
import { StoreHealth } from './health.ts'

/** Why a read produced no snapshot. */
export type CacheMiss = 'miss' | 'error' | 'skipped'

/** SET ... EX for every key, each with its own value and TTL, in one round trip. */
const WRITE_SNAPSHOTS = `local n = #KEYS
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[n + i]) end
return n`

interface SnapshotWrite { readonly key: string, readonly value: string, readonly ttlSeconds: number }
type WithWriteSnapshots = Redis & { rlWriteSnapshots: (keyCount: number, ...args: Array<string | number>) => Promise<number> }

/** Most keys in one MGET or one write-back call. */
const MAX_KEYS_PER_COMMAND = 256

export class RedisCache {
  readonly client: Redis | null
  readonly health: StoreHealth
  readonly #prefix: string
  readonly #metrics: Metrics
  #closing = false
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })
  readonly #reads = new Batcher<string, string | null>((keys) => this.#readMany(keys), { maxSize: MAX_KEYS_PER_COMMAND, maxInFlight: 4, windowMs: 0 })
  readonly #writes = new Batcher<SnapshotWrite, void>((items) => this.#writeMany(items), { maxSize: MAX_KEYS_PER_COMMAND, maxInFlight: 2, windowMs: 0 })

  constructor (config: Config['redis'], log: Logger, metrics: Metrics) {
    this.#prefix = config.keyPrefix
    this.#metrics = metrics
    this.health = new StoreHealth('redis', log, metrics)
    if (!config.enabled) {
      metrics.storeDisabled('redis')
      this.client = null
      return
    }
    this.client = new Redis(config.url, {
      // Fail fast: a cache that queues or retries commands only adds latency.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: config.commandTimeoutMs,
      connectTimeout: config.connectTimeoutMs,
      enableAutoPipelining: true,
      // Reads and write-backs are batched here already; another turn of the loop adds only latency.
      autoPipeliningIgnoredCommands: ['get', 'mget', 'set', 'rlWriteSnapshots'],
      lazyConnect: true,
      retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2_000)
    })
    this.client.defineCommand('rlWriteSnapshots', { lua: WRITE_SNAPSHOTS })
    // ioredis emits 'error' on every failed reconnect; StoreHealth logs only the transition.
    this.client.on('error', (err) => this.health.failed(err))
    this.client.on('ready', () => { this.#breaker.success(); this.health.succeeded() })
    this.client.on('end', () => { if (!this.#closing) this.health.failed(new Error('connection closed')) })
  }

  /** Connects, waiting at most the connect timeout. Never throws: Redis is optional. */
  async start (): Promise<void> {
    if (this.client === null) return
    try {
      await this.client.connect()
    } catch {
      // 'error' already recorded the outage; ioredis keeps reconnecting in the background.
    }
  }

  key (policy: string, userId: string): string {
    // One hash tag per bucket: every key of a bucket lives in one Redis Cluster slot.
    return `${this.#prefix}{${policy}:${userId}}`
  }

  async read (key: string): Promise<BucketSnapshot | CacheMiss> {
    const client = this.client
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) {
      this.#metrics.cacheLookups.inc({ result: 'skipped' })
      return 'skipped'
    }
    let value: string | null
    try {
      value = await this.#reads.submit(key)
    } catch {
      this.#metrics.cacheLookups.inc({ result: 'error' })
      return 'error'
    }
    const snapshot = value === null ? null : decode(value)
    this.#metrics.cacheLookups.inc({ result: snapshot === null ? 'miss' : 'hit' })
    return snapshot ?? 'miss'
  }

  /** Stores a snapshot for `ttlSeconds`; fire and forget, never on the response's path. */
  write (key: string, snapshot: BucketSnapshot, ttlSeconds: number): void {
    const client = this.client
    if (client === null || client.status !== 'ready' || this.#breaker.open) return
    this.#writes.submit({ key, value: encode(snapshot), ttlSeconds }).catch(() => {}) // recorded in #writeMany
  }

  /** One round trip for every read waiting. */
  async #readMany (keys: string[]): Promise<Array<string | null>> {
    const client = this.client!
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'get' })
    let values: Array<string | null>
    try {
      values = keys.length === 1 ? [await client.get(keys[0]!)] : await client.mget(keys)
    } catch (err) {
      this.#failed('get', err)
      throw err
    }
    this.#breaker.success()
    this.health.succeeded()
    return values
  }

  /** One round trip for every write-back waiting; the later of two writes to a key wins. */
  async #writeMany (items: SnapshotWrite[]): Promise<void[]> {
    const client = this.client!
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'set' })
    try {
      if (items.length === 1) {
        await client.set(items[0]!.key, items[0]!.value, 'EX', items[0]!.ttlSeconds)
      } else {
        const n = items.length
        const args = new Array<string | number>(3 * n)
        for (let i = 0; i < n; i++) {
          const item = items[i]!
          args[i] = item.key
          args[n + i] = item.value
          args[2 * n + i] = item.ttlSeconds
        }
        await (client as WithWriteSnapshots).rlWriteSnapshots(n, ...args)
      }
    } catch (err) {
      this.#failed('set', err)
      throw err
    }
    return new Array<void>(items.length)
  }

  /** Removes a snapshot; used when a bucket is raised (reset), where a stale one would be wrong. */
  async remove (key: string): Promise<void> {
    if (this.client === null) return
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'del' })
    try {
      await this.client.del(key)
    } catch (err) {
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'del' })
      throw err
    }
  }

  async ping (): Promise<boolean> {
    if (this.client === null || this.client.status !== 'ready') return false
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'ping' })
    try {
      await this.client.ping()
      return true
    } catch {
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'ping' })
      return false
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
    try {
      await this.client.quit()
    } catch {
      this.client.disconnect()
    }
  }
}

export function encode (s: BucketSnapshot): string {
  return `${s.tokens}|${s.atMs}`
}

export function decode (value: string): BucketSnapshot | null {
  const bar = value.indexOf('|')
  if (bar < 0) return null
  const tokens = Number(value.slice(0, bar))
  const atMs = Number(value.slice(bar + 1))
  return Number.isFinite(tokens) && Number.isFinite(atMs) ? { tokens, atMs } : null
}
