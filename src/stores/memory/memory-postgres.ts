/**
 * PostgreSQL in memory (the DecidingStore port), for fast tests of the decision flow: the
 * semantics of migrations/003 (rate_limit_decide) and migrations/005 (rate_limit_lock,
 * rate_limit_merge) without a server. One row per (policy name, userId), decided on the
 * database clock `now()` (never moving a row's time backwards), refilled with the arithmetic of
 * src/core/token-bucket.ts.
 *
 * No timers: every method is synchronous behind a resolved promise, except a decision on a row
 * that a hand-back holds locked, which waits for the hand-back's transaction to end (as
 * `SELECT ... FOR UPDATE` does). `down` models an outage: every method rejects with
 * StoreFailure, and a hand-back whose store goes down before it commits rolls back.
 */
import type { BucketSnapshot, Policy } from '../../core/domain.ts'
import { StoreFailure } from '../../core/errors.ts'
import type { BucketLedger, BucketPeek, BucketRequest, DecidingStore, OwnedBucket, SpentBucket, StoreDecision, SyncEntry } from '../../core/ports.ts'
import { EPSILON } from '../../core/token-bucket.ts'
import { mergeLower } from '../../core/write-behind-merge.ts'

export interface MemoryPostgresOptions {
  /** The database clock, epoch milliseconds (clock_timestamp()). */
  readonly now: () => number
}

interface Row { tokens: number, atMs: number }

function rowKey (policy: string, userId: string): string {
  return policy + '\n' + userId
}

/** The SQL refill: least(capacity, tokens + elapsed * rate), time never backwards. */
function refill (row: Row, capacity: number, rate: number, nowMs: number): { tokens: number, atMs: number } {
  const atMs = Math.max(nowMs, row.atMs)
  return { tokens: Math.min(capacity, row.tokens + ((atMs - row.atMs) * rate) / 1000), atMs }
}

export class MemoryPostgres implements DecidingStore {
  readonly #now: () => number
  readonly #rows = new Map<string, Row>()
  /** Rows a hand-back holds locked, and the promise that settles when its transaction ends. */
  readonly #locks = new Map<string, Promise<void>>()

  /** The outage switch: while true every method rejects with StoreFailure. */
  down = false
  /** Every batch slot in flight (tests set it: read-alongside then reads first). */
  busy = false
  decideCalls = 0
  peekCalls = 0
  resetCalls = 0
  pingCalls = 0
  handBackCalls = 0

  syncCalls = 0
  /** The BucketLedger port on these rows (write-behind-ledger.ts's SQL, transcribed). */
  readonly ledger: BucketLedger

  constructor (options: MemoryPostgresOptions) {
    this.#now = options.now
    this.ledger = {
      load: async (request) => this.#load(request),
      sync: async (entries) => { this.#sync(entries) },
      ping: async () => { await this.ping() }
    }
  }

  #load ({ policy, userId }: BucketRequest): number | null {
    if (this.down) throw this.#fail('load the buckets')
    const row = this.#rows.get(rowKey(policy.name, userId))
    return row === undefined ? null : refill(row, policy.capacity, policy.refillPerSecond, this.#now()).tokens
  }

  /** One statement: all of it applies, or (down) none. Stamped now - age; the lower count at the later time wins. */
  #sync (entries: readonly SyncEntry[]): void {
    this.syncCalls++
    if (this.down) throw this.#fail('take the write-behind flush')
    const now = this.#now()
    for (const e of entries) {
      const key = rowKey(e.policy.name, e.userId)
      const merged = mergeLower(this.#rows.get(key) ?? null, { tokens: e.tokens, atMs: now - Math.max(0, e.ageMs) }, e.policy)
      this.#rows.set(key, { tokens: merged.tokens, atMs: merged.atMs })
    }
  }

  /** The database clock. */
  nowMs (): number { return this.#now() }

  /** The stored row (for assertions), or undefined. */
  row (policy: string, userId: string): BucketSnapshot | undefined {
    const row = this.#rows.get(rowKey(policy, userId))
    return row === undefined ? undefined : { tokens: row.tokens, atMs: row.atMs }
  }

  /** Every stored row: [policy, userId, snapshot]. */
  rows (): Array<[string, string, BucketSnapshot]> {
    return [...this.#rows].map(([k, r]) => {
      const [policy, userId] = k.split('\n') as [string, string]
      return [policy, userId, { tokens: r.tokens, atMs: r.atMs }]
    })
  }

  #fail (what: string): StoreFailure {
    return new StoreFailure('postgres', `PostgreSQL could not ${what}`, { cause: new Error('connect ECONNREFUSED 127.0.0.1:5432 (in-memory outage)') })
  }

  async decide (request: BucketRequest): Promise<StoreDecision> {
    this.decideCalls++
    if (this.down) throw this.#fail('decide')
    const { policy, userId, cost } = request
    const key = rowKey(policy.name, userId)
    // FOR UPDATE: wait while a hand-back holds the row.
    for (let lock = this.#locks.get(key); lock !== undefined; lock = this.#locks.get(key)) await lock
    if (this.down) throw this.#fail('decide')
    let row = this.#rows.get(key)
    let created = false
    if (row === undefined) {
      row = { tokens: policy.capacity, atMs: this.#now() }
      this.#rows.set(key, row)
      created = true
    }
    const { tokens, atMs } = refill(row, policy.capacity, policy.refillPerSecond, this.#now())
    if (tokens + EPSILON >= cost) {
      row.tokens = tokens - cost
      row.atMs = atMs
      return { allowed: true, canPay: true, snapshot: { tokens: tokens - cost, atMs }, created }
    }
    // A denial changes nothing: the stored row projects to the same tokens.
    return { allowed: false, canPay: false, snapshot: { tokens, atMs }, created }
  }

  async refund (requests: readonly BucketRequest[]): Promise<BucketSnapshot[]> {
    if (this.down) throw this.#fail('refund')
    const now = this.#now()
    return requests.map(({ policy, userId, cost }) => {
      const row = this.#rows.get(rowKey(policy.name, userId))
      if (row === undefined) return { tokens: policy.capacity, atMs: now }
      const { tokens, atMs } = refill(row, policy.capacity, policy.refillPerSecond, now)
      row.tokens = Math.min(policy.capacity, tokens + cost)
      row.atMs = atMs
      return { tokens: row.tokens, atMs }
    })
  }

  /** migrations/006: the buckets are charged together or not at all. */
  async decideGroup (requests: readonly BucketRequest[]): Promise<StoreDecision[]> {
    this.decideCalls++
    if (this.down) throw this.#fail('decide')
    for (const { policy, userId } of requests) {
      const key = rowKey(policy.name, userId)
      for (let lock = this.#locks.get(key); lock !== undefined; lock = this.#locks.get(key)) await lock
    }
    if (this.down) throw this.#fail('decide')
    const now = this.#now()
    const states = requests.map(({ policy, userId, cost }) => {
      const key = rowKey(policy.name, userId)
      let row = this.#rows.get(key)
      let created = false
      if (row === undefined) {
        row = { tokens: policy.capacity, atMs: now }
        this.#rows.set(key, row)
        created = true
      }
      const refilled = refill(row, policy.capacity, policy.refillPerSecond, now)
      return { row, created, ...refilled, canPay: refilled.tokens + EPSILON >= cost, cost }
    })
    const allowed = states.every((s) => s.canPay)
    return states.map((s) => {
      const tokens = allowed ? s.tokens - s.cost : s.tokens
      if (allowed) { s.row.tokens = tokens; s.row.atMs = s.atMs }
      return { allowed, canPay: s.canPay, snapshot: { tokens, atMs: s.atMs }, created: s.created }
    })
  }

  async peek (policy: string, userId: string): Promise<BucketPeek> {
    this.peekCalls++
    if (this.down) throw this.#fail('peek')
    const row = this.#rows.get(rowKey(policy, userId))
    return { snapshot: row === undefined ? null : { tokens: row.tokens, atMs: row.atMs }, nowMs: this.#now() }
  }

  /** The rows not full now, in user id order (this twin keeps no overrides: the policy's numbers). */
  async spentBuckets (policy: Policy, afterUserId: string, limit: number): Promise<SpentBucket[]> {
    if (this.down) throw this.#fail('re-seed')
    const now = this.#now()
    const out: SpentBucket[] = []
    for (const [key, row] of this.#rows) {
      const [name, userId] = key.split('\n') as [string, string]
      if (name !== policy.name || userId <= afterUserId) continue
      if (refill(row, policy.capacity, policy.refillPerSecond, now).tokens < policy.capacity) out.push({ userId, snapshot: { tokens: row.tokens, atMs: row.atMs } })
    }
    return out.sort((a, b) => a.userId < b.userId ? -1 : 1).slice(0, limit)
  }

  async reset (policy: string, userId: string): Promise<boolean> {
    this.resetCalls++
    if (this.down) throw this.#fail('reset')
    return this.#rows.delete(rowKey(policy, userId))
  }

  async ping (): Promise<void> {
    this.pingCalls++
    if (this.down) throw this.#fail('answer')
  }

  async handBack (buckets: readonly OwnedBucket[], takeOver: (buckets: readonly OwnedBucket[]) => Promise<ReadonlyArray<number | null>>): Promise<Array<BucketSnapshot | null>> {
    this.handBackCalls++
    if (this.down) throw this.#fail('hand back')
    const keys = buckets.map((b) => rowKey(b.policy, b.userId))
    // Another hand-back holding one of these rows: wait for its transaction (the row locks).
    for (;;) {
      const held = keys.map((k) => this.#locks.get(k)).find((l) => l !== undefined)
      if (held === undefined) break
      await held
    }
    let release!: () => void
    const lock = new Promise<void>((resolve) => { release = resolve })
    const locked = [...new Set(keys)]
    for (const k of locked) this.#locks.set(k, lock)
    // rate_limit_lock: missing rows are created full; undone if the transaction rolls back.
    const inserted: string[] = []
    try {
      for (let i = 0; i < buckets.length; i++) {
        const k = keys[i]!
        if (!this.#rows.has(k)) {
          this.#rows.set(k, { tokens: buckets[i]!.capacity, atMs: this.#now() })
          inserted.push(k)
        }
      }
      const tokens = await takeOver(buckets)
      // The commit needs the server: gone meanwhile, everything rolls back.
      if (this.down) throw this.#fail('commit the hand-back')
      // rate_limit_merge, keeping the lower count (all-or-nothing: nothing above can fail).
      const merged = new Array<BucketSnapshot | null>(buckets.length).fill(null)
      for (let i = 0; i < buckets.length; i++) {
        const theirs = tokens[i]
        if (theirs === null || theirs === undefined) continue
        const b = buckets[i]!
        const row = this.#rows.get(keys[i]!)!
        const ours = refill(row, b.capacity, b.refillPerSecond, this.#now())
        row.tokens = Math.min(ours.tokens, theirs)
        row.atMs = ours.atMs
        merged[i] = { tokens: row.tokens, atMs: row.atMs }
      }
      return merged
    } catch (err) {
      for (const k of inserted) this.#rows.delete(k)
      throw err
    } finally {
      for (const k of locked) this.#locks.delete(k)
      release()
    }
  }
}
