/**
 * Redis as the deciding store while PostgreSQL is unreachable: an atomic Lua decision on the
 * Redis server clock (redis-scripts.ts DECIDE), and the bookkeeping that lets the buckets it
 * decided be handed back to PostgreSQL later (write-back.ts).
 *
 * Every bucket Redis decides is recorded in one set per key prefix, `<prefix>redis-owned`,
 * by an SADD sent alongside each decision rather than inside the script: every script touches
 * only its bucket's key (one Redis Cluster slot), and the set lives in a slot of its own. The
 * set is therefore kept loosely: a lost SADD is repaired by the bucket's next decision, an
 * extra member is dropped by the next hand-back, and a Redis-owned bucket that sees no more
 * traffic expires once it would be full anyway, which is also PostgreSQL's view of it by then.
 *
 * It has a client of its own. The cache's client gives up after `REDIS_TIMEOUT_MS` (50 ms),
 * right for a cache that PostgreSQL backs up; but while PostgreSQL is down Redis is the only
 * store that can decide exactly, and a reply merely late (a busy machine, a GC pause) must not
 * hand the decision to the in-process fail mode. So decisions wait up to
 * `fallback.redisTimeoutMs`, with a circuit breaker of their own for a Redis that is really gone.
 */
import type { Config } from '../../config/schema.ts'
import type { Policy } from '../../core/domain.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import { CircuitBreaker } from '../breaker.ts'
import type { RedisCache } from './snapshot-cache.ts'
import { createRedisClient } from './client.ts'
import { defineScripts, type ScriptedRedis } from './scripts.ts'

export interface RedisDecision {
  readonly allowed: boolean
  /** Tokens left, Redis clock. */
  readonly tokens: number
}

/** 'handing-back': a gateway is merging this bucket into PostgreSQL right now; ask PostgreSQL. */
export type RedisDecisionOutcome = RedisDecision | 'handing-back' | 'unavailable'

/** One Redis-owned bucket, as recorded in the set. */
export interface OwnedBucket {
  readonly member: string
  /** The policy's name: PostgreSQL's row key. */
  readonly policy: string
  /** The name its Redis key is made from (Policy.cacheName, else the name). */
  readonly cacheName: string
  readonly userId: string
  readonly capacity: number
  readonly refillPerSecond: number
}

export class RedisFallback {
  readonly #cache: RedisCache
  readonly #metrics: Metrics
  readonly #client: ScriptedRedis | null
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })
  readonly ownedSetKey: string

  constructor (cache: RedisCache, config: Config['redis'], timeoutMs: number, metrics: Metrics) {
    this.#cache = cache
    this.#metrics = metrics
    this.ownedSetKey = cache.prefix + 'redis-owned'
    this.#client = !config.enabled
      ? null
      : defineScripts(createRedisClient(config.url, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        commandTimeout: timeoutMs,
        connectTimeout: config.connectTimeoutMs,
        enableAutoPipelining: true,
        lazyConnect: true,
        retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2_000)
      }))
    // Outages are logged by the cache's client (StoreHealth), once per transition.
    this.#client?.on('error', () => {})
  }

  /** Connects in the background; ioredis keeps reconnecting. Never throws. */
  start (): void {
    this.#client?.connect().catch(() => {})
  }

  async close (): Promise<void> {
    if (this.#client === null) return
    try {
      await this.#client.quit()
    } catch {
      this.#client.disconnect()
    }
  }

  /**
   * Decides in Redis. `dbNowMs` (the gateway's estimate of the database clock) projects a
   * PostgreSQL snapshot that Redis takes over. `force` takes a bucket back from a hand-back
   * (used when PostgreSQL turned out to be unreachable after all).
   */
  async decide (policy: Policy, userId: string, cost: number, dbNowMs: number, force: boolean): Promise<RedisDecisionOutcome> {
    const client = this.#client
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return 'unavailable'
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'decide' })
    // Recorded first, or at the same time: a member without a Redis-owned bucket is harmless.
    client.sadd(this.ownedSetKey, encodeMember(policy, userId)).catch(() => {})
    let reply: [number, string, string]
    try {
      reply = await client.rlDecide(this.#cache.key(policy.cacheName ?? policy.name, userId), cost, policy.capacity,
        policy.refillPerSecond, fullRefillSeconds(policy), dbNowMs, force ? 1 : 0)
    } catch (err) {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'decide' })
      this.#cache.health.failed(err)
      return 'unavailable'
    }
    this.#breaker.success()
    this.#cache.health.succeeded()
    if (reply[0] === -1) return 'handing-back'
    return { allowed: reply[0] === 1, tokens: Number(reply[1]) }
  }

  /** Some of the Redis-owned buckets (SSCAN: never blocks Redis on a large set). */
  async owned (cursor: string, count: number): Promise<{ cursor: string, buckets: OwnedBucket[] }> {
    const client = this.#requireClient()
    const [next, members] = await client.sscan(this.ownedSetKey, cursor, 'COUNT', count)
    const buckets: OwnedBucket[] = []
    for (const member of members) {
      const bucket = decodeMember(member)
      if (bucket !== null) buckets.push(bucket)
      else await client.srem(this.ownedSetKey, member) // not ours to interpret: drop it
    }
    return { cursor: next, buckets }
  }

  async ownedCount (): Promise<number> {
    return await this.#requireClient().scard(this.ownedSetKey)
  }

  /**
   * Step 1 of a hand-back, with the PostgreSQL rows locked: marks each bucket as being handed
   * back and returns its tokens now (Redis clock), or null where Redis does not own it.
   */
  async handBack (buckets: readonly OwnedBucket[]): Promise<Array<number | null>> {
    const client = this.#requireClient()
    // One call per bucket (auto-pipelined): buckets live in different cluster slots.
    const replies = await Promise.all(buckets.map((b) => client.rlHandBack(this.#cache.key(b.cacheName, b.userId), b.capacity,
      b.refillPerSecond, fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond }))))
    return replies.map(([status, tokens]) => status === 1 ? Number(tokens) : null)
  }

  /** Step 2, after the merge committed: the buckets become snapshots of the merged rows. */
  async handedBack (buckets: readonly OwnedBucket[], snapshots: readonly string[]): Promise<void> {
    const client = this.#requireClient()
    const done = await Promise.all(buckets.map((b, i) => client.rlHandedBack(this.#cache.key(b.cacheName, b.userId), snapshots[i]!,
      fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond }))))
    // Taken back by Redis meanwhile (0): stays in the set for the next pass.
    const finished = buckets.filter((_, i) => done[i] === 1).map((b) => b.member)
    if (finished.length > 0) await client.srem(this.ownedSetKey, ...finished)
  }

  #requireClient (): ScriptedRedis {
    const client = this.#client
    if (client === null || client.status !== 'ready') throw new Error('Redis is not connected')
    return client
  }
}

/** The set member names the bucket and the policy it was decided with (JSON array). */
export function encodeMember (policy: Policy, userId: string): string {
  return JSON.stringify([policy.name, userId, policy.capacity, policy.refillPerSecond, policy.cacheName ?? policy.name])
}

export function decodeMember (member: string): OwnedBucket | null {
  try {
    const value: unknown = JSON.parse(member)
    if (!Array.isArray(value) || value.length !== 5) return null
    const [policy, userId, capacity, refillPerSecond, cacheName] = value as unknown[]
    if (typeof policy !== 'string' || typeof userId !== 'string' || typeof capacity !== 'number' ||
        typeof refillPerSecond !== 'number' || !(capacity > 0) || !(refillPerSecond > 0) || typeof cacheName !== 'string') return null
    return { member, policy, cacheName, userId, capacity, refillPerSecond }
  } catch {
    return null
  }
}
