/**
 * Redis as the deciding store while PostgreSQL is unreachable (the RedisDecider port): an
 * atomic Lua decision on the Redis server clock (scripts.ts DECIDE), and the Redis half of
 * the hand-back of the buckets it decided (src/limiter/hand-back.ts runs the protocol).
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
 * That wait is a `withDeadline` (src/stores/deadline.ts), not ioredis's `commandTimeout`, whose
 * timer fires before a reply that arrived during an event-loop stall is read.
 */
import type { Config } from '../../config/schema.ts'
import type { BucketSnapshot, Policy } from '../../core/domain.ts'
import { REDIS_HANDING_BACK, REDIS_UNAVAILABLE, type BucketRequest, type OwnedBucket, type RedisDecider as RedisDeciderPort, type RedisGroupVerdict, type RedisVerdict } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import { CircuitBreaker } from '../breaker.ts'
import { withDeadline } from '../deadline.ts'
import type { StoreHealth } from '../health.ts'
import { createRedisClient, isCluster } from './client.ts'
import { defineScripts, ownerOf, type ScriptedRedis } from './scripts.ts'
import { bucketKey, encode } from './snapshot-cache.ts'
import { decodeMember, encodeMember, memberOf, type OwnedMember } from '../owned-member.ts'

/** DECIDE_GROUP's reply (scripts.ts) as a verdict; shared with the in-memory twin's. */
export function groupVerdict (reply: ReadonlyArray<number | string>, n: number): RedisGroupVerdict {
  const status = Number(reply[0])
  if (status === -1) return REDIS_HANDING_BACK
  if (status === -2) return { kind: 'taking-over', waitMs: Number(reply[1]) }
  const buckets = new Array<{ canPay: boolean, tokens: number }>(n)
  for (let i = 0; i < n; i++) buckets[i] = { canPay: Number(reply[1 + 2 * i]) === 1, tokens: Number(reply[2 + 2 * i]) }
  return { kind: 'decided', allowed: status === 1, buckets }
}

export class RedisDecider implements RedisDeciderPort {
  readonly #prefix: string
  readonly #health: StoreHealth
  readonly #metrics: Metrics
  readonly #client: ScriptedRedis | null
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })
  readonly ownedSetKey: string

  #fenceMs: number
  #timeoutMs: number

  /**
   * `health` is shared with the snapshot cache: one Redis, one outage log. `fenceMs`: how long
   * a take-over waits before Redis decides (scripts.ts, the "t" state): at least the longest a
   * PostgreSQL allowance of another gateway can take from its cache read to its snapshot write.
   */
  constructor (config: Config['redis'], timeoutMs: number, health: StoreHealth, metrics: Metrics, fenceMs = 0) {
    this.#prefix = config.keyPrefix
    this.#fenceMs = fenceMs
    this.#timeoutMs = timeoutMs
    this.#health = health
    this.#metrics = metrics
    this.ownedSetKey = config.keyPrefix + 'redis-owned'
    this.#client = !config.enabled
      ? null
      : defineScripts(createRedisClient(config.url, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        // No commandTimeout: every call waits in bounded() (see above).
        connectTimeout: config.connectTimeoutMs,
        enableAutoPipelining: true,
        // TCP keep-alive: a dead peer is noticed on an idle connection too.
        keepAlive: 10_000,
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

  get enabled (): boolean {
    return this.#client !== null
  }

  /**
   * The deciding client, shared with the write-behind adapter (write-behind-redis.ts): both
   * decide with Redis as the only store, so both wait fallback.redisTimeoutMs, not the cache's 50 ms.
   */
  get client (): ScriptedRedis | null {
    return this.#client
  }

  get available (): boolean {
    return this.#client !== null && this.#client.status === 'ready'
  }

  /** A reload changed fallback.redisTimeoutMs: later commands wait this long. */
  setTimeout (timeoutMs: number): void {
    this.#timeoutMs = timeoutMs
  }

  /** A call on the deciding client, bounded by fallback.redisTimeoutMs (its expiry counted). */
  bounded<T> (operation: string, work: Promise<T>): Promise<T> {
    return withDeadline(work, this.#timeoutMs, 'redis', operation, () => { this.#metrics.storeDeadlines.inc({ store: 'redis', operation }) })
  }

  /** A reload changed the take-over fence. */
  setFence (fenceMs: number): void {
    this.#fenceMs = fenceMs
  }

  async close (): Promise<void> {
    if (this.#client === null) return
    try {
      await this.#client.quit()
    } catch {
      this.#client.disconnect()
    }
  }

  async decide (request: BucketRequest, dbNowMs: number, force: boolean): Promise<RedisVerdict> {
    const client = this.#deciding()
    if (client === null) return REDIS_UNAVAILABLE
    const { policy, userId, cost } = request
    // Recorded first, or at the same time: a member without a Redis-owned bucket is harmless.
    client.sadd(this.ownedSetKey, encodeMember(policy, userId)).catch(() => {})
    const reply = await this.#decided(client.rlDecide(bucketKey(this.#prefix, policy.cacheName ?? policy.name, userId), cost, policy.capacity,
      policy.refillPerSecond, fullRefillSeconds(policy), dbNowMs, force ? 1 : 0, this.#fenceMs))
    if (reply === null) return REDIS_UNAVAILABLE
    if (reply[0] === -1) return REDIS_HANDING_BACK
    if (reply[0] === -2) return { kind: 'taking-over', waitMs: Number(reply[1]) }
    return { kind: 'decided', allowed: reply[0] === 1, tokens: Number(reply[1]) }
  }

  /** One request's buckets in one DECIDE_GROUP call (scripts.ts); null on a Cluster or when two share a key. */
  async decideGroup (requests: readonly BucketRequest[], dbNowMs: number, force: boolean): Promise<RedisGroupVerdict | null> {
    if (this.#client !== null && isCluster(this.#client)) return null
    const keys = requests.map(({ policy, userId }) => bucketKey(this.#prefix, policy.cacheName ?? policy.name, userId))
    if (new Set(keys).size !== keys.length) return null
    const client = this.#deciding()
    if (client === null) return REDIS_UNAVAILABLE
    client.sadd(this.ownedSetKey, ...requests.map(({ policy, userId }) => encodeMember(policy, userId))).catch(() => {})
    const args: Array<string | number> = [...keys, dbNowMs, force ? 1 : 0, this.#fenceMs]
    for (const { policy, cost } of requests) args.push(cost, policy.capacity, policy.refillPerSecond, fullRefillSeconds(policy))
    const reply = await this.#decided(client.rlDecideGroup(keys.length, ...args))
    return reply === null ? REDIS_UNAVAILABLE : groupVerdict(reply, requests.length)
  }

  /** The client for a decision, counted as one; null while Redis is away or the breaker is open. */
  #deciding (): ScriptedRedis | null {
    const client = this.#client
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return null
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'decide' })
    return client
  }

  /** A decision's reply, bounded, fed to the breaker and the health; null when it failed. */
  async #decided<T> (work: Promise<T>): Promise<T | null> {
    try {
      const reply = await this.bounded('decide', work)
      this.#breaker.success()
      this.#health.succeeded()
      return reply
    } catch (err) {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'decide' })
      this.#health.failed(err)
      return null
    }
  }

  /** Gives `request.cost` tokens back to a bucket Redis charged; false when Redis could not. */
  async refund (request: BucketRequest): Promise<boolean> {
    const client = this.#client
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return false
    const { policy, userId, cost } = request
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'refund' })
    try {
      const [status] = await this.bounded('refund', client.rlRefund(bucketKey(this.#prefix, policy.cacheName ?? policy.name, userId), cost, policy.capacity,
        policy.refillPerSecond, fullRefillSeconds(policy)))
      this.#breaker.success()
      return status === 1
    } catch (err) {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'refund' })
      this.#health.failed(err)
      return false
    }
  }

  /** Some of the Redis-owned buckets (SSCAN: never blocks Redis on a large set). */
  async owned (cursor: string, count: number): Promise<{ cursor: string, buckets: OwnedBucket[] }> {
    const client = this.#requireClient()
    const [next, members] = await this.bounded('owned', client.sscan(this.ownedSetKey, cursor, 'COUNT', count))
    const buckets: OwnedMember[] = []
    for (const member of members) {
      const bucket = decodeMember(member)
      if (bucket !== null) buckets.push(bucket)
      else await this.bounded('owned', client.srem(this.ownedSetKey, member)) // not ours to interpret: drop it
    }
    return { cursor: next, buckets }
  }

  async ownedCount (): Promise<number> {
    return await this.bounded('owned', this.#requireClient().scard(this.ownedSetKey))
  }

  /**
   * Step 1 of a hand-back, with the PostgreSQL rows locked: marks each bucket as being handed
   * back and returns its tokens now (Redis clock), or null where Redis does not own it.
   */
  async markHandingBack (buckets: readonly OwnedBucket[]): Promise<Array<number | null>> {
    const client = this.#requireClient()
    // One call per bucket (auto-pipelined): buckets live in different cluster slots.
    const replies = await this.bounded('hand-back', Promise.all(buckets.map((b) => client.rlHandBack(bucketKey(this.#prefix, b.cacheName, b.userId), b.capacity,
      b.refillPerSecond, fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond })))))
    return replies.map(([status, tokens]) => status === 1 ? Number(tokens) : null)
  }

  /** Step 2, after the merge committed: the buckets become snapshots of the merged rows. */
  async handedBack (buckets: readonly OwnedBucket[], snapshots: ReadonlyArray<BucketSnapshot | null>): Promise<void> {
    const client = this.#requireClient()
    const done = await this.bounded('hand-back', Promise.all(buckets.map((b, i) => {
      const merged = snapshots[i]
      return client.rlHandedBack(bucketKey(this.#prefix, b.cacheName, b.userId), merged === null || merged === undefined ? '' : encode(merged),
        fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond }))
    })))
    // Taken back by Redis meanwhile (0): stays in the set for the next pass.
    const finished = buckets.filter((_, i) => done[i] === 1)
    if (finished.length === 0) return
    await this.bounded('hand-back', client.srem(this.ownedSetKey, ...finished.map(memberOf)))
    // A gateway that still finds PostgreSQL down may have taken a bucket over again between its
    // hand-back and the SREM; its SADD came first (a no-op then), so the SREM dropped a member
    // whose bucket is Redis-owned again, and no pass would hand it back. Such members go back.
    const values = await this.bounded('hand-back', Promise.all(finished.map((b) => client.get(bucketKey(this.#prefix, b.cacheName, b.userId)))))
    const again = finished.filter((_, i) => values[i] != null && ownerOf(values[i]!) !== 'postgres')
    if (again.length > 0) await this.bounded('hand-back', client.sadd(this.ownedSetKey, ...again.map(memberOf)))
  }

  #requireClient (): ScriptedRedis {
    const client = this.#client
    if (client === null || client.status !== 'ready') throw new Error('Redis is not connected')
    return client
  }
}
