/**
 * Redis deciding every request of a write-behind policy (the WriteBehindRedis port): one
 * atomic Lua script on the Redis clock (scripts.ts WB_DECIDE_MANY; a request's several
 * buckets, all or nothing: WB_DECIDE_GROUPS). On one server (or Sentinel's master) the
 * decisions of one turn of the event loop go in one call, one round trip for all of them: the
 * call itself was about a third of Redis's work per request and half of ioredis's
 * (docs/performance.md). On a Cluster each goes alone, one slot per call.
 * A bucket Redis does not hold is a miss; the limiter loads PostgreSQL's state and seeds it
 * (seeded only if still absent), so a new or evicted bucket starts from the truth, not full.
 *
 * It uses the Redis decider's client: while deciding, Redis is the only store, so a reply
 * merely late (up to fallback.redisTimeoutMs) must not send the request elsewhere; a Redis
 * really gone opens this adapter's own circuit breaker and PostgreSQL decides (strictly).
 */
import type { BucketRequest, WriteBehindDecided, WriteBehindGroupVerdict, WriteBehindRedis as WriteBehindRedisPort, WriteBehindVerdict } from '../../core/ports.ts'
import { WB_MISS, WB_UNAVAILABLE } from '../../core/ports.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import type { Metrics } from '../../observability/metrics.ts'
import { Batcher } from '../batcher.ts'
import { CircuitBreaker } from '../breaker.ts'
import type { StoreHealth } from '../health.ts'
import { isCluster } from './client.ts'
import type { ScriptedRedis } from './scripts.ts'

/** The write-behind key of a bucket: the snapshot key's hash tag (one Cluster slot), its own namespace. */
export function writeBehindKey (prefix: string, cacheName: string, userId: string): string {
  return `${prefix}wb{${cacheName}:${userId}}`
}

/** Most decisions in one call (a turn of the event loop rarely has more). */
const MAX_KEYS_PER_CALL = 256
/** Most requests of several buckets in one call. */
const MAX_GROUPS_PER_CALL = 64

/** Bounds one call's wait (RedisDecider.bounded: fallback.redisTimeoutMs); the identity where the client bounds its own. */
type Bound = <T>(operation: string, work: Promise<T>) => Promise<T>

/** One bucket as a decision script is asked about it: its key and arguments. */
interface BucketCall { readonly key: string, readonly cost: number, readonly capacity: number, readonly rate: number, readonly ttl: number, readonly seed: number | '' }

/** A bucket's five script arguments (cost, capacity, rate, ttl, seed) from `at`. */
function putArgs (args: Array<string | number>, at: number, d: BucketCall): void {
  args[at] = d.cost
  args[at + 1] = d.capacity
  args[at + 2] = d.rate
  args[at + 3] = d.ttl
  args[at + 4] = d.seed
}

export class RedisWriteBehind implements WriteBehindRedisPort {
  readonly #client: () => ScriptedRedis | null
  readonly #bounded: Bound
  readonly #prefix: string
  readonly #metrics: Metrics
  readonly #health: StoreHealth
  readonly #keyTtlSeconds: () => number
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })
  /** Coalescing, for a single server; null on a Cluster or without Redis. */
  readonly #decisions: Batcher<BucketCall, WriteBehindVerdict> | null
  /** The same for requests of several buckets (each item one request's group). */
  readonly #groups: Batcher<readonly BucketCall[], WriteBehindGroupVerdict> | null

  /**
   * `client`: the decider's (null: Redis disabled). `health` is shared: one Redis, one outage log.
   * `keyTtlSeconds`: the live limits.writeBehindKeyTtlSeconds (a bucket is kept at least until full).
   * `bounded`: the decider's deadline on each call (its client has no command timeout).
   */
  constructor (client: () => ScriptedRedis | null, prefix: string, health: StoreHealth, metrics: Metrics, keyTtlSeconds: () => number,
    bounded: Bound = (_operation, work) => work) {
    this.#client = client
    this.#bounded = bounded
    this.#keyTtlSeconds = keyTtlSeconds
    this.#prefix = prefix
    this.#health = health
    this.#metrics = metrics
    const c = client()
    const single = c !== null && !isCluster(c)
    this.#decisions = single ? new Batcher((batch) => this.#decideMany(c, batch), { maxSize: MAX_KEYS_PER_CALL, maxInFlight: 4, windowMs: 0 }) : null
    this.#groups = single ? new Batcher((batch) => this.#decideGroups(c, batch), { maxSize: MAX_GROUPS_PER_CALL, maxInFlight: 4, windowMs: 0 }) : null
  }

  /** Connected (the circuit breaker aside: `lower`, the switch back, is its probe). */
  get available (): boolean {
    const c = this.#client()
    return c !== null && c.status === 'ready'
  }

  async decide (request: BucketRequest): Promise<WriteBehindVerdict> {
    return await this.#decide(request, '')
  }

  async seedAndDecide (request: BucketRequest, tokens: number): Promise<WriteBehindVerdict> {
    return await this.#decide(request, tokens)
  }

  async #decide (request: BucketRequest, seed: number | ''): Promise<WriteBehindVerdict> {
    const client = this.#client()
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return WB_UNAVAILABLE
    const { policy, userId, cost } = request
    const call: BucketCall = {
      key: writeBehindKey(this.#prefix, policy.cacheName ?? policy.name, userId),
      cost,
      capacity: policy.capacity,
      rate: policy.refillPerSecond,
      ttl: this.#ttl(policy),
      seed
    }
    if (this.#decisions !== null) return await this.#decisions.submit(call)
    return (await this.#decideMany(client, [call]))[0]!
  }

  /** One WB_DECIDE_MANY call. Never rejects: a failed call is every decision's WB_UNAVAILABLE, counted once. */
  async #decideMany (client: ScriptedRedis, batch: readonly BucketCall[]): Promise<WriteBehindVerdict[]> {
    const n = batch.length
    let send: () => Promise<Array<number | string>>
    if (n === 1) {
      // The one-key form names its key first: auto-pipelining on a Cluster routes by the first argument.
      const d = batch[0]!
      send = async () => await client.rlWbDecide(d.key, d.cost, d.capacity, d.rate, d.ttl, d.seed)
    } else {
      const args: Array<string | number> = new Array<string | number>(6 * n)
      for (let i = 0; i < n; i++) {
        args[i] = batch[i]!.key
        putArgs(args, n + 5 * i, batch[i]!)
      }
      send = async () => await client.rlWbDecideMany(n, ...args)
    }
    const reply = await this.#call(send)
    if (reply === null) return batch.map(() => WB_UNAVAILABLE)
    const verdicts = new Array<WriteBehindVerdict>(n)
    for (let i = 0; i < n; i++) {
      const status = reply[4 * i]
      verdicts[i] = status === -2
        ? WB_MISS
        : { kind: 'decided', allowed: status === 1, tokens: Number(reply[4 * i + 1]), atMs: Number(reply[4 * i + 2]), seeded: reply[4 * i + 3] === 1 }
    }
    return verdicts
  }

  /**
   * A request's buckets decided together: the groups of one turn of the event loop share one
   * WB_DECIDE_GROUPS call. Null on a Cluster (one slot per bucket) or for a bucket named twice
   * (tiers made two policies one), where one by one is right.
   */
  async decideGroup (requests: readonly BucketRequest[], seeds: ReadonlyArray<number | null>): Promise<WriteBehindGroupVerdict | null> {
    if (this.#groups === null) return null
    const group = new Array<BucketCall>(requests.length)
    for (let i = 0; i < requests.length; i++) {
      const { policy, userId, cost } = requests[i]!
      const key = writeBehindKey(this.#prefix, policy.cacheName ?? policy.name, userId)
      for (let k = 0; k < i; k++) if (group[k]!.key === key) return null
      group[i] = { key, cost, capacity: policy.capacity, rate: policy.refillPerSecond, ttl: this.#ttl(policy), seed: seeds[i] ?? '' }
    }
    const client = this.#client()
    if (client === null || client.status !== 'ready' || !this.#breaker.allow(Date.now())) return WB_UNAVAILABLE
    return await this.#groups.submit(group)
  }

  /** One WB_DECIDE_GROUPS call. Never rejects: a failed call is every group's WB_UNAVAILABLE, counted once. */
  async #decideGroups (client: ScriptedRedis, batch: ReadonlyArray<readonly BucketCall[]>): Promise<WriteBehindGroupVerdict[]> {
    const g = batch.length
    let keyCount = 0
    for (const group of batch) keyCount += group.length
    const args = new Array<string | number>(keyCount + 1 + g + 5 * keyCount)
    args[keyCount] = g
    let k = 0
    for (let i = 0; i < g; i++) {
      const group = batch[i]!
      args[keyCount + 1 + i] = group.length
      for (const d of group) {
        args[k] = d.key
        putArgs(args, keyCount + 1 + g + 5 * k, d)
        k++
      }
    }
    const reply = await this.#call(async () => await client.rlWbDecideGroups(keyCount, ...args))
    if (reply === null) return batch.map(() => WB_UNAVAILABLE)
    const verdicts = new Array<WriteBehindGroupVerdict>(g)
    let o = 0
    for (let i = 0; i < g; i++) {
      const n = batch[i]!.length
      if (reply[o] === -2) {
        const missing = new Array<boolean>(n)
        for (let b = 0; b < n; b++) missing[b] = reply[o + 4 * b + 1] === 1
        verdicts[i] = { kind: 'miss', missing }
      } else {
        const buckets = new Array<WriteBehindDecided>(n)
        for (let b = 0; b < n; b++) {
          const r = o + 4 * b + 1
          buckets[b] = { kind: 'decided', allowed: reply[r] === 1, tokens: Number(reply[r + 1]), atMs: Number(reply[r + 2]), seeded: reply[r + 3] === 1 }
        }
        verdicts[i] = { kind: 'decided', charged: reply[o] === 1, buckets }
      }
      o += 1 + 4 * n
    }
    return verdicts
  }

  /** One decision call, counted: its reply, or null when it failed (breaker and outage log told). */
  async #call (send: () => Promise<Array<number | string>>): Promise<Array<number | string> | null> {
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'wb-decide' })
    let reply: Array<number | string>
    try {
      reply = await this.#bounded('wb-decide', send())
    } catch (err) {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'wb-decide' })
      this.#health.failed(err)
      return null
    }
    this.#breaker.success()
    this.#health.succeeded()
    return reply
  }

  async lower (requests: readonly BucketRequest[], tokens: ReadonlyArray<number | null>): Promise<void> {
    const client = this.#client()
    if (client === null || client.status !== 'ready') throw new Error('Redis is not connected')
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'wb-lower' })
    // One call per bucket (auto-pipelined): the buckets live in different Cluster slots.
    try {
      await this.#bounded('wb-lower', Promise.all(requests.map(async ({ policy, userId }, i) => {
        const t = tokens[i]
        if (t === null || t === undefined) return
        await client.rlWbLower(writeBehindKey(this.#prefix, policy.cacheName ?? policy.name, userId), t, policy.capacity, policy.refillPerSecond, this.#ttl(policy))
      })))
    } catch (err) {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'wb-lower' })
      throw err
    }
    // Redis answered: decisions may go to it again.
    this.#breaker.success()
  }

  async refund (request: BucketRequest): Promise<{ readonly tokens: number, readonly atMs: number } | null> {
    const client = this.#client()
    if (client === null || client.status !== 'ready') return null
    const { policy, userId, cost } = request
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'wb-refund' })
    try {
      const [ok, tokens, atMs] = await this.#bounded('wb-refund', client.rlWbRefund(writeBehindKey(this.#prefix, policy.cacheName ?? policy.name, userId), cost, policy.capacity,
        policy.refillPerSecond, this.#ttl(policy)))
      return ok === 1 ? { tokens: Number(tokens), atMs: Number(atMs) } : null
    } catch {
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'wb-refund' })
      return null
    }
  }

  #ttl (policy: BucketRequest['policy']): number {
    return Math.max(fullRefillSeconds(policy), this.#keyTtlSeconds())
  }
}
