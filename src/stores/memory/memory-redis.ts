/**
 * Redis in memory: one key→value map shared by the snapshot cache (SnapshotCache port) and the
 * decider (RedisDecider port), as the real adapters share one Redis. The values and the
 * scripts are those of src/stores/redis/scripts.ts, transcribed:
 *
 *   "tokens|atMs"    a snapshot of PostgreSQL's row (database clock)
 *   "tokens|atMs|r"  Redis owns the bucket (Redis clock)
 *   "tokens|atMs|m"  being handed back (Redis clock)
 *
 * WRITE (newer snapshot wins; a Redis-owned value is never overwritten but charged), DECIDE,
 * HAND_BACK and HANDED_BACK, plus the loosely kept set of Redis-owned buckets. The Redis clock
 * is a function of its own (`now`), so it can differ from the database's. TTLs are kept only
 * with `expire: true` (off by default: a test then sees every value until it is replaced).
 *
 * Outages: `down` (the client is disconnected: reads give `error`, or `skipped` with
 * `downReads: 'skipped'`, snapshot writes are kept and written when it is up again, as the real
 * cache keeps them (unsent-snapshots.ts), the decider is unavailable and its hand-back
 * methods reject), and `lose()` (restarted empty). No timers; everything is synchronous behind
 * resolved promises.
 */
import type { BucketSnapshot, Policy } from '../../core/domain.ts'
import {
  CACHE_ERROR, CACHE_MISS, CACHE_SKIPPED, HANDING_BACK, REDIS_HANDING_BACK, REDIS_OWNED, REDIS_UNAVAILABLE, WB_MISS, WB_UNAVAILABLE,
  type BucketRequest, type CacheRead, type OwnedBucket, type RedisDecider, type RedisGroupVerdict, type RedisVerdict, type ReseedClaim, type ReseedRenewal, type SeedSnapshot, type SnapshotCache,
  type WriteBehindGroupVerdict, type WriteBehindRedis, type WriteBehindVerdict
} from '../../core/ports.ts'
import { fullRefillSeconds } from '../../core/token-bucket.ts'
import { decodeMember, encodeMember, memberOf } from '../owned-member.ts'
import { MAX_UNSENT, UnsentSnapshots } from '../unsent-snapshots.ts'

export interface MemoryRedisOptions {
  /** The Redis server clock (TIME), epoch milliseconds. */
  readonly now: () => number
  readonly keyPrefix?: string
  /** Keep TTLs (EX, KEEPTTL) and expire values on the Redis clock. Default false. */
  readonly expire?: boolean
}

interface Entry { value: string, expiresAtMs: number }

/** parse() of scripts.ts: tokens, at and the owner suffix ('' for a snapshot), or null. */
export function parseValue (v: string | undefined): { tokens: number, at: number, kind: string } | null {
  if (v === undefined) return null
  const m = /^([^|]*)\|([^|]*)\|?(.*)$/.exec(v)
  if (m === null) return null
  // Lua's tonumber: an empty or malformed field is nil.
  const num = (s: string): number | null => s.trim() === '' ? null : Number.isFinite(Number(s)) ? Number(s) : null
  const tokens = num(m[1]!)
  const at = num(m[2]!)
  if (tokens === null || at === null) return null
  return { tokens, at, kind: m[3]! }
}

function refill (tokens: number, at: number, now: number, cap: number, rate: number): number {
  if (now <= at) return Math.min(tokens, cap)
  return Math.min(cap, tokens + ((now - at) * rate) / 1000)
}

/** spend() of scripts.ts: refill to now, charge if the bucket can pay. [tokens left, 1 allowed | 0]. */
function spend (tokens: number, at: number, now: number, cap: number, rate: number, cost: number): [number, number] {
  const refilled = refill(tokens, at, now, cap, rate)
  return refilled + 1e-9 >= cost ? [refilled - cost, 1] : [refilled, 0]
}

/** num() of scripts.ts: an exact round trip (JavaScript's shortest representation is exact). */
function num (x: number): string { return String(x) }

export function encodeSnapshot (s: BucketSnapshot): string {
  return `${s.tokens}|${s.atMs}`
}

/** The re-seed's keys on one server, as reseed-marks.ts names them: the claim, the marker, the progress key. */
function reseedKeys (prefix: string): { claim: string, marker: string, progress: string } {
  return { claim: `${prefix}seeding{reseed}`, marker: `${prefix}seeded{reseed}`, progress: `${prefix}reseeding{reseed}` }
}

/** The real adapters' key: one hash tag per bucket. */
export function memoryBucketKey (prefix: string, cacheName: string, userId: string): string {
  return `${prefix}{${cacheName}:${userId}}`
}

/** The server: its data, clock and outage switches. `cache` and `decider` are its two clients. */
export class MemoryRedis {
  readonly keyPrefix: string
  readonly ownedSetKey: string
  readonly #now: () => number
  readonly #expire: boolean
  readonly #data = new Map<string, Entry>()
  readonly #owned = new Set<string>()

  #down = false
  /** What a read gives while down: a failed command, or skipped (disconnected, circuit open). */
  downReads: 'error' | 'skipped' = 'error'
  /** Redis configured at all (false: the cache is 'disabled' and the decider not enabled). */
  enabled = true

  readCalls = 0
  writeCalls = 0
  decideCalls = 0
  /** The take-over fence of the decider (scripts.ts "t" state); 0: Redis decides a take-over at once. */
  takeoverFenceMs = 0
  handBackCalls = 0

  wbDecideCalls = 0

  readonly cache: MemorySnapshotCache
  readonly decider: MemoryRedisDecider
  readonly writeBehind: MemoryWriteBehindRedis

  /** Disconnected: nothing reaches the data. Back up, the cache writes what it kept meanwhile. */
  get down (): boolean { return this.#down }
  set down (down: boolean) {
    const reconnected = this.#down && !down
    this.#down = down
    if (!down) this.cache.resend()
    if (reconnected) this.cache.reconnected()
  }

  constructor (options: MemoryRedisOptions) {
    this.#now = options.now
    this.keyPrefix = options.keyPrefix ?? 'rl:'
    this.ownedSetKey = this.keyPrefix + 'redis-owned'
    this.#expire = options.expire ?? false
    this.cache = new MemorySnapshotCache(this)
    this.decider = new MemoryRedisDecider(this)
    this.writeBehind = new MemoryWriteBehindRedis(this)
  }

  /** The write-behind key (write-behind-redis.ts): the bucket's hash tag, a namespace of its own. */
  wbKey (cacheName: string, userId: string): string {
    return `${this.keyPrefix}wb{${cacheName}:${userId}}`
  }

  /** One key of WB_DECIDE_MANY (scripts.ts): [1 allowed | 0 denied | -2 miss, tokens, atMs, seeded]. */
  wbDecideScript (key: string, cost: number, cap: number, rate: number, ttl: number, seed: number | null): [number, number, number, 0 | 1] {
    let now = this.#now()
    const current = parseValue(this.get(key))
    let tokens: number
    let at: number
    let seeded: 0 | 1 = 0
    if (current === null) {
      if (seed === null) return [-2, 0, 0, 0]
      tokens = Math.min(cap, seed)
      at = now
      seeded = 1
    } else {
      tokens = current.tokens
      at = current.at
    }
    if (now < at) now = at
    let allowed: number
    [tokens, allowed] = spend(tokens, at, now, cap, rate, cost)
    this.set(key, num(tokens) + '|' + num(now) + '|w', ttl)
    return [allowed, tokens, now, seeded]
  }

  /**
   * One group of WB_DECIDE_GROUPS (scripts.ts): the keys missing without a seed (nothing
   * written), or each key's [1 can pay | 0 cannot, tokens, atMs, seeded] and whether all were
   * charged.
   */
  wbDecideGroupScript (buckets: ReadonlyArray<{ readonly key: string, readonly cost: number, readonly cap: number, readonly rate: number, readonly ttl: number, readonly seed: number | null }>):
    { readonly missing: boolean[] } | { readonly charged: boolean, readonly buckets: Array<[number, number, number, 0 | 1]> } {
    const clock = this.#now()
    const states = buckets.map(({ key, cap, seed }) => {
      const current = parseValue(this.get(key))
      if (current !== null) return { tokens: current.tokens, at: current.at, seeded: 0 as const }
      return seed === null ? null : { tokens: Math.min(cap, seed), at: clock, seeded: 1 as const }
    })
    if (states.includes(null)) return { missing: states.map((x) => x === null) }
    const decided = buckets.map((b, i) => {
      const { tokens, at, seeded } = states[i]!
      const now = Math.max(clock, at)
      const t = refill(tokens, at, now, b.cap, b.rate)
      return { t, now, seeded, pay: t + 1e-9 >= b.cost ? 1 : 0 }
    })
    const charged = decided.every((d) => d.pay === 1)
    return {
      charged,
      buckets: decided.map((d, i) => {
        const b = buckets[i]!
        const t = charged ? d.t - b.cost : d.t
        if (charged || d.seeded === 1) this.set(b.key, num(t) + '|' + num(d.now) + '|w', b.ttl)
        return [d.pay, t, d.now, d.seeded]
      })
    }
  }

  /** WB_LOWER of scripts.ts: 1 if lowered. */
  wbLowerScript (key: string, theirs: number, cap: number, rate: number, ttl: number): 0 | 1 {
    const current = parseValue(this.get(key))
    if (current === null) return 0
    let now = this.#now()
    if (now < current.at) now = current.at
    const tokens = refill(current.tokens, current.at, now, cap, rate)
    if (theirs >= tokens) return 0
    this.set(key, num(theirs) + '|' + num(now) + '|w', ttl)
    return 1
  }

  /** WB_REFUND of scripts.ts: [1, tokens, atMs], or [0, 0, 0] when the bucket is missing. */
  wbRefundScript (key: string, amount: number, cap: number, rate: number, ttl: number): [number, number, number] {
    const current = parseValue(this.get(key))
    if (current === null) return [0, 0, 0]
    let now = this.#now()
    if (now < current.at) now = current.at
    const tokens = Math.min(cap, refill(current.tokens, current.at, now, cap, rate) + amount)
    this.set(key, num(tokens) + '|' + num(now) + '|w', ttl)
    return [1, tokens, now]
  }

  /** The Redis clock (TIME). */
  nowMs (): number { return this.#now() }

  /** Restarted empty: every value and the owned set are gone. */
  lose (): void {
    this.#data.clear()
    this.#owned.clear()
  }

  key (cacheName: string, userId: string): string {
    return memoryBucketKey(this.keyPrefix, cacheName, userId)
  }

  /** GET (expired values read as missing). */
  get (key: string): string | undefined {
    const e = this.#data.get(key)
    if (e === undefined) return undefined
    if (this.#expire && this.#now() >= e.expiresAtMs) {
      this.#data.delete(key)
      return undefined
    }
    return e.value
  }

  /** SET with EX `ttlSeconds`, or KEEPTTL when undefined. */
  set (key: string, value: string, ttlSeconds?: number): void {
    const previous = this.#data.get(key)
    const expiresAtMs = ttlSeconds === undefined ? (previous?.expiresAtMs ?? Infinity) : this.#now() + ttlSeconds * 1000
    this.#data.set(key, { value, expiresAtMs })
  }

  del (key: string): void { this.#data.delete(key) }

  /** Every live key and value (for assertions). */
  entries (): Array<[string, string]> {
    const out: Array<[string, string]> = []
    for (const k of [...this.#data.keys()]) {
      const v = this.get(k)
      if (v !== undefined) out.push([k, v])
    }
    return out
  }

  /** The owned set's members (for assertions). */
  ownedMembers (): string[] { return [...this.#owned].sort() }

  sadd (member: string): void { this.#owned.add(member) }
  srem (member: string): void { this.#owned.delete(member) }

  /** WRITE of scripts.ts. Returns 1 if the snapshot was stored. */
  write (key: string, snapshot: string, ttlSeconds: number, charge: number): 0 | 1 {
    const current = parseValue(this.get(key))
    if (current !== null && (current.kind === 'r' || current.kind === 'm' || current.kind === 't')) {
      if (charge > 0) this.set(key, num(current.tokens - charge) + '|' + num(current.at) + '|' + current.kind)
      return 0
    }
    if (current !== null) {
      const fresh = parseValue(snapshot)
      // Lua compares with the new snapshot's fields; ours are always well formed.
      if (fresh !== null && (current.at > fresh.at || (current.at === fresh.at && current.tokens <= fresh.tokens))) return 0
    }
    this.set(key, snapshot, ttlSeconds)
    return 1
  }

  /** DECIDE_GROUP of scripts.ts, as a verdict. `buckets`: key, cost, capacity, rate, ttl of each. */
  decideGroupScript (buckets: ReadonlyArray<{ key: string, cost: number, cap: number, rate: number, ttl: number }>, dbNowMs: number, force: boolean, fenceMs = 0): RedisGroupVerdict {
    const now = this.#now()
    const states = buckets.map((b) => {
      const current = parseValue(this.get(b.key))
      if (current === null) return { tokens: b.cap, at: now, take: true, kind: '' }
      if (current.kind === 'r' || current.kind === 'm' || current.kind === 't') return { tokens: current.tokens, at: current.at, take: false, kind: current.kind }
      return { tokens: refill(current.tokens, current.at, dbNowMs, b.cap, b.rate), at: now, take: true, kind: '' }
    })
    if (!force && states.some((s) => s.kind === 'm')) return REDIS_HANDING_BACK
    if (fenceMs > 0 && states.some((s) => s.take)) {
      states.forEach((s, i) => { if (s.take) this.set(buckets[i]!.key, num(Math.min(s.tokens, buckets[i]!.cap)) + '|' + num(now) + '|t', buckets[i]!.ttl) })
      return { kind: 'taking-over', waitMs: fenceMs }
    }
    const wait = Math.max(0, ...states.map((s) => s.kind === 't' ? s.at + fenceMs - now : 0))
    if (wait > 0) return { kind: 'taking-over', waitMs: wait }
    const decided = states.map((s, i) => {
      const b = buckets[i]!
      const stamp = Math.max(now, s.at)
      const left = refill(s.tokens, s.at, stamp, b.cap, b.rate)
      return { left, stamp, canPay: left + 1e-9 >= b.cost }
    })
    const allowed = decided.every((d) => d.canPay)
    return {
      kind: 'decided',
      allowed,
      buckets: decided.map((d, i) => {
        const tokens = allowed ? d.left - buckets[i]!.cost : d.left
        this.set(buckets[i]!.key, num(tokens) + '|' + num(d.stamp) + '|r', buckets[i]!.ttl)
        return { canPay: d.canPay, tokens }
      })
    }
  }

  /** DECIDE of scripts.ts: [1 allowed | 0 denied | -1 being handed back | -2 taking over (wait [1] ms), tokens, atMs]. */
  decideScript (key: string, cost: number, cap: number, rate: number, ttl: number, dbNowMs: number, force: boolean, fenceMs = 0): [number, number, number] {
    let now = this.#now()
    const current = parseValue(this.get(key))
    let tokens: number
    let at: number
    let takeOver = false
    if (current === null) {
      tokens = cap
      at = now
      takeOver = true
    } else if (current.kind === 'm') {
      if (!force) return [-1, current.tokens, current.at]
      tokens = current.tokens
      at = current.at
    } else if (current.kind === 't') {
      if (now < current.at + fenceMs) return [-2, current.at + fenceMs - now, current.at]
      tokens = current.tokens
      at = current.at
    } else if (current.kind !== 'r') {
      tokens = refill(current.tokens, current.at, dbNowMs, cap, rate)
      at = now
      takeOver = true
    } else {
      tokens = current.tokens
      at = current.at
    }
    if (now < at) now = at
    if (takeOver && fenceMs > 0) {
      tokens = refill(tokens, at, now, cap, rate)
      this.set(key, num(tokens) + '|' + num(now) + '|t', ttl)
      return [-2, fenceMs, now]
    }
    let allowed: number
    [tokens, allowed] = spend(tokens, at, now, cap, rate, cost)
    this.set(key, num(tokens) + '|' + num(now) + '|r', ttl)
    return [allowed, tokens, now]
  }

  /** REFUND of scripts.ts: true when the Redis-owned bucket got the tokens back. */
  refundScript (key: string, amount: number, cap: number, rate: number, ttl: number): boolean {
    const current = parseValue(this.get(key))
    if (current === null || current.kind !== 'r') return false
    let now = this.#now()
    if (now < current.at) now = current.at
    const tokens = Math.min(cap, refill(current.tokens, current.at, now, cap, rate) + amount)
    this.set(key, num(tokens) + '|' + num(now) + '|r', ttl)
    return true
  }

  /** HAND_BACK of scripts.ts: the tokens now, or null where Redis does not own the bucket. */
  handBackScript (key: string, cap: number, rate: number, ttl: number): number | null {
    const current = parseValue(this.get(key))
    if (current === null || (current.kind !== 'r' && current.kind !== 'm')) return null
    let now = this.#now()
    if (now < current.at) now = current.at
    const tokens = refill(current.tokens, current.at, now, cap, rate)
    this.set(key, num(tokens) + '|' + num(now) + '|m', ttl)
    return tokens
  }

  /** HANDED_BACK of scripts.ts: 1 done, 0 taken back by Redis meanwhile. */
  handedBackScript (key: string, snapshot: string, ttl: number): 0 | 1 {
    const current = parseValue(this.get(key))
    if (current?.kind === 'r' || current?.kind === 't') return 0
    if (current?.kind === 'm') this.set(key, snapshot, ttl)
    return 1
  }
}

/** The SnapshotCache port on a MemoryRedis. */
export class MemorySnapshotCache implements SnapshotCache {
  readonly #redis: MemoryRedis
  readonly #unsent = new UnsentSnapshots(MAX_UNSENT)
  readonly #readyListeners: Array<() => void> = []

  constructor (redis: MemoryRedis) {
    this.#redis = redis
  }

  key (cacheName: string, userId: string): string {
    return this.#redis.key(cacheName, userId)
  }

  async read (key: string): Promise<CacheRead> {
    const r = this.#redis
    if (!r.enabled) return CACHE_SKIPPED
    r.readCalls++
    if (r.down) return r.downReads === 'error' ? CACHE_ERROR : CACHE_SKIPPED
    const value = r.get(key)
    if (value === undefined) return CACHE_MISS
    // ownerOf of scripts.ts: the suffix decides, before any parsing.
    const n = value.length
    if (n > 2 && value[n - 2] === '|') {
      if (value[n - 1] === 'r' || value[n - 1] === 't') return REDIS_OWNED
      if (value[n - 1] === 'm') return HANDING_BACK
    }
    // decode of snapshot-cache.ts.
    const bar = value.indexOf('|')
    if (bar < 0) return CACHE_MISS
    const tokens = Number(value.slice(0, bar))
    const atMs = Number(value.slice(bar + 1))
    return Number.isFinite(tokens) && Number.isFinite(atMs) ? { kind: 'snapshot', tokens, atMs } : CACHE_MISS
  }

  /** Writes apply at once here. */
  async settled (): Promise<void> {}

  write (key: string, snapshot: BucketSnapshot, ttlSeconds: number, charge: number): void {
    const r = this.#redis
    if (!r.enabled) return
    if (r.down) {
      this.#unsent.add(key, snapshot, ttlSeconds, charge)
      return
    }
    r.writeCalls++
    r.write(key, encodeSnapshot(snapshot), ttlSeconds, charge)
  }

  /** Writes what was kept while down (MemoryRedis.down set back to false). */
  resend (): void {
    for (const u of this.#unsent.take()) this.write(u.key, u.snapshot, u.ttlSeconds, u.charge)
  }

  async remove (key: string): Promise<void> {
    const r = this.#redis
    if (!r.enabled) return
    this.#unsent.forget(key)
    if (r.down) throw new Error('Redis is not connected (in-memory outage)')
    r.del(key)
    r.del(r.keyPrefix + 'wb' + key.slice(r.keyPrefix.length))
  }

  async ping (): Promise<'up' | 'down' | 'disabled'> {
    const r = this.#redis
    return !r.enabled ? 'disabled' : r.down ? 'down' : 'up'
  }

  onReady (listener: () => void): void {
    this.#readyListeners.push(listener)
  }

  /** Up again after `down` (snapshot-cache.ts: ioredis's 'ready'). */
  reconnected (): void {
    for (const listener of this.#readyListeners) listener()
  }

  /** RESEED_CLAIM and RESEED_SHARD of scripts.ts, on one shard. */
  async claimReseed (owner: string, ttlMs: number): Promise<ReseedClaim> {
    const r = this.#redis
    if (!r.enabled || r.down) return 'unavailable'
    const { claim, marker, progress } = reseedKeys(r.keyPrefix)
    if (r.get(marker) !== undefined) return 'seeded'
    const holder = r.get(claim)
    if (holder !== undefined && holder !== owner) return 'busy'
    r.set(claim, owner, ttlMs / 1000)
    r.set(progress, owner, ttlMs / 1000)
    return 'claimed'
  }

  async renewReseed (owner: string, ttlMs: number): Promise<ReseedRenewal> {
    const r = this.#redis
    if (!r.enabled || r.down) return 'unavailable'
    const { claim, progress } = reseedKeys(r.keyPrefix)
    if (r.get(claim) !== owner || r.get(progress) !== owner) return 'lost'
    r.set(claim, owner, ttlMs / 1000)
    r.set(progress, owner, ttlMs / 1000)
    return 'claimed'
  }

  async seed (snapshots: readonly SeedSnapshot[]): Promise<void> {
    const r = this.#redis
    if (!r.enabled || r.down) throw new Error('Redis is not connected (in-memory outage)')
    for (const w of snapshots) {
      r.writeCalls++
      r.write(w.key, encodeSnapshot(w.snapshot), w.ttlSeconds, 0)
    }
  }

  async endReseed (owner: string, done: boolean): Promise<boolean> {
    const r = this.#redis
    if (!r.enabled) return false
    if (r.down) throw new Error('Redis is not connected (in-memory outage)')
    const { claim, marker, progress } = reseedKeys(r.keyPrefix)
    const held = r.get(progress) === owner
    if (held) {
      if (done) r.set(marker, '1', Infinity)
      r.del(progress)
    }
    if (r.get(claim) === owner) r.del(claim)
    return done && held
  }
}

/** The RedisDecider port on a MemoryRedis. */
export class MemoryRedisDecider implements RedisDecider {
  readonly #redis: MemoryRedis

  constructor (redis: MemoryRedis) {
    this.#redis = redis
  }

  get enabled (): boolean { return this.#redis.enabled }

  get available (): boolean { return this.#redis.enabled && !this.#redis.down }

  #require (): MemoryRedis {
    if (!this.available) throw new Error('Redis is not connected (in-memory outage)')
    return this.#redis
  }

  async decide (request: BucketRequest, dbNowMs: number, force: boolean): Promise<RedisVerdict> {
    const r = this.#redis
    if (!this.available) return REDIS_UNAVAILABLE
    r.decideCalls++
    const { policy, userId, cost } = request
    r.sadd(encodeMember(policy, userId))
    const [status, tokens] = r.decideScript(r.key(policy.cacheName ?? policy.name, userId), cost, policy.capacity,
      policy.refillPerSecond, fullRefillSeconds(policy), dbNowMs, force, r.takeoverFenceMs)
    if (status === -1) return REDIS_HANDING_BACK
    if (status === -2) return { kind: 'taking-over', waitMs: tokens }
    return { kind: 'decided', allowed: status === 1, tokens }
  }

  async decideGroup (requests: readonly BucketRequest[], dbNowMs: number, force: boolean): Promise<RedisGroupVerdict | null> {
    const r = this.#redis
    const buckets = requests.map(({ policy, userId, cost }) => ({ key: r.key(policy.cacheName ?? policy.name, userId), cost, cap: policy.capacity, rate: policy.refillPerSecond, ttl: fullRefillSeconds(policy) }))
    if (new Set(buckets.map((b) => b.key)).size !== buckets.length) return null
    if (!this.available) return REDIS_UNAVAILABLE
    r.decideCalls++
    for (const { policy, userId } of requests) r.sadd(encodeMember(policy, userId))
    return r.decideGroupScript(buckets, dbNowMs, force, r.takeoverFenceMs)
  }

  async refund (request: BucketRequest): Promise<boolean> {
    if (!this.available) return false
    const { policy, userId, cost } = request
    return this.#redis.refundScript(this.#redis.key(policy.cacheName ?? policy.name, userId), cost, policy.capacity, policy.refillPerSecond, fullRefillSeconds(policy))
  }

  /** SSCAN: the cursor is the last member returned, so members removed meanwhile skip nothing. */
  async owned (cursor: string, count: number): Promise<{ cursor: string, buckets: OwnedBucket[] }> {
    const r = this.#require()
    const after = cursor === '0' ? null : cursor.slice(1)
    const members = r.ownedMembers().filter((m) => after === null || m > after)
    const page = members.slice(0, Math.max(1, count))
    const buckets: OwnedBucket[] = []
    for (const member of page) {
      const bucket = decodeMember(member)
      if (bucket !== null) buckets.push(bucket)
      else r.srem(member)
    }
    const next = page.length < members.length ? '>' + page[page.length - 1]! : '0'
    return { cursor: next, buckets }
  }

  async ownedCount (): Promise<number> {
    return this.#require().ownedMembers().length
  }

  async markHandingBack (buckets: readonly OwnedBucket[]): Promise<Array<number | null>> {
    const r = this.#require()
    r.handBackCalls++
    return buckets.map((b) => r.handBackScript(r.key(b.cacheName, b.userId), b.capacity, b.refillPerSecond,
      fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond })))
  }

  async handedBack (buckets: readonly OwnedBucket[], snapshots: ReadonlyArray<BucketSnapshot | null>): Promise<void> {
    const r = this.#require()
    buckets.forEach((b, i) => {
      const merged = snapshots[i]
      const done = r.handedBackScript(r.key(b.cacheName, b.userId), merged === null || merged === undefined ? '' : encodeSnapshot(merged),
        fullRefillSeconds({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond }))
      if (done === 1) {
        r.srem(memberOf(b))
      }
    })
  }
}

/** The WriteBehindRedis port on a MemoryRedis. */
export class MemoryWriteBehindRedis implements WriteBehindRedis {
  readonly #redis: MemoryRedis

  constructor (redis: MemoryRedis) {
    this.#redis = redis
  }

  get available (): boolean { return this.#redis.enabled && !this.#redis.down }

  async decide (request: BucketRequest): Promise<WriteBehindVerdict> {
    return this.#decide(request, null)
  }

  async seedAndDecide (request: BucketRequest, tokens: number): Promise<WriteBehindVerdict> {
    return this.#decide(request, tokens)
  }

  #decide (request: BucketRequest, seed: number | null): WriteBehindVerdict {
    const r = this.#redis
    if (!this.available) return WB_UNAVAILABLE
    r.wbDecideCalls++
    const { policy, userId, cost } = request
    const [status, tokens, atMs, seeded] = r.wbDecideScript(r.wbKey(policy.cacheName ?? policy.name, userId), cost, policy.capacity,
      policy.refillPerSecond, fullRefillSeconds(policy), seed)
    if (status === -2) return WB_MISS
    return { kind: 'decided', allowed: status === 1, tokens, atMs, seeded: seeded === 1 }
  }

  async decideGroup (requests: readonly BucketRequest[], seeds: ReadonlyArray<number | null>): Promise<WriteBehindGroupVerdict | null> {
    const r = this.#redis
    const keys = requests.map(({ policy, userId }) => r.wbKey(policy.cacheName ?? policy.name, userId))
    if (new Set(keys).size < keys.length) return null
    if (!this.available) return WB_UNAVAILABLE
    r.wbDecideCalls++
    const out = r.wbDecideGroupScript(requests.map(({ policy, cost }, i) =>
      ({ key: keys[i]!, cost, cap: policy.capacity, rate: policy.refillPerSecond, ttl: fullRefillSeconds(policy), seed: seeds[i] ?? null })))
    if ('missing' in out) return { kind: 'miss', missing: out.missing }
    return {
      kind: 'decided',
      charged: out.charged,
      buckets: out.buckets.map(([pay, tokens, atMs, seeded]) => ({ kind: 'decided', allowed: pay === 1, tokens, atMs, seeded: seeded === 1 }))
    }
  }

  async lower (requests: readonly BucketRequest[], tokens: ReadonlyArray<number | null>): Promise<void> {
    const r = this.#redis
    if (!this.available) throw new Error('Redis is not connected (in-memory outage)')
    requests.forEach(({ policy, userId }, i) => {
      const t = tokens[i]
      if (t === null || t === undefined) return
      r.wbLowerScript(r.wbKey(policy.cacheName ?? policy.name, userId), t, policy.capacity, policy.refillPerSecond, fullRefillSeconds(policy))
    })
  }

  async refund (request: BucketRequest): Promise<{ readonly tokens: number, readonly atMs: number } | null> {
    const r = this.#redis
    if (!this.available) return null
    const { policy, userId, cost } = request
    const [ok, tokens, atMs] = r.wbRefundScript(r.wbKey(policy.cacheName ?? policy.name, userId), cost, policy.capacity, policy.refillPerSecond, fullRefillSeconds(policy))
    return ok === 1 ? { tokens, atMs } : null
  }
}
