/**
 * Concurrency slots as Redis leases (the LeaseStore port): one sorted set per (policy, caller),
 * `<prefix>cc{policy:caller}` (one hash tag: one Redis Cluster slot), member = lease id, score =
 * the lease's expiry on the Redis clock. Expired leases are dropped by the next acquire, and the
 * whole key expires with its last lease, so a gateway that dies leaks nothing for longer than
 * one lease. Uses the snapshot cache's client (its 50 ms timeout: this is on the request path).
 */
import { CircuitBreaker } from '../breaker.ts'
import type { LeaseStore, LeaseVerdict } from '../../core/ports.ts'
import type { Metrics } from '../../observability/metrics.ts'
import type { ScriptedRedis } from './scripts.ts'

const TIME = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

/** KEYS[1] the caller's set. ARGV: limit, lease ms, lease id. Returns {1 acquired | 0 refused, leases in flight}. */
const ACQUIRE = TIME + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, n + 1}
`

/** KEYS[1] the caller's set. ARGV: lease ms, lease id. Extends a live lease; 0 when it is gone. */
const RENEW = TIME + `
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`

interface LeaseCommands {
  rlLeaseAcquire: (key: string, limit: number, leaseMs: number, leaseId: string) => Promise<[number, number]>
  rlLeaseRenew: (key: string, leaseMs: number, leaseId: string) => Promise<number>
}

/** Tries per lease per renewal round (each bounded by the client's command timeout). */
const RENEW_ATTEMPTS = 3

export function leaseKey (prefix: string, policy: string, userId: string): string {
  return `${prefix}cc{${policy}:${userId}}`
}

export class RedisLeases implements LeaseStore {
  readonly #client: (ScriptedRedis & LeaseCommands) | null
  readonly #prefix: string
  readonly #metrics: Metrics
  readonly #breaker = new CircuitBreaker({ threshold: 3, openMs: 500, maxOpenMs: 5_000 })

  constructor (client: ScriptedRedis | null, prefix: string, metrics: Metrics) {
    this.#prefix = prefix
    this.#metrics = metrics
    if (client !== null) {
      client.defineCommand('rlLeaseAcquire', { numberOfKeys: 1, lua: ACQUIRE })
      client.defineCommand('rlLeaseRenew', { numberOfKeys: 1, lua: RENEW })
    }
    this.#client = client as (ScriptedRedis & LeaseCommands) | null
  }

  get enabled (): boolean { return this.#client !== null }

  #ready (): (ScriptedRedis & LeaseCommands) | null {
    const c = this.#client
    return c !== null && c.status === 'ready' && this.#breaker.allow(Date.now()) ? c : null
  }

  async acquire (policy: string, userId: string, limit: number, leaseId: string, leaseMs: number): Promise<LeaseVerdict> {
    const c = this.#ready()
    if (c === null) return { kind: 'unavailable' }
    this.#metrics.storeOperations.inc({ store: 'redis', operation: 'lease' })
    try {
      const [ok, n] = await c.rlLeaseAcquire(leaseKey(this.#prefix, policy, userId), limit, leaseMs, leaseId)
      this.#breaker.success()
      return { kind: ok === 1 ? 'acquired' : 'refused', inFlight: Number(n) }
    } catch {
      this.#breaker.failure(Date.now())
      this.#metrics.storeErrors.inc({ store: 'redis', operation: 'lease' })
      return { kind: 'unavailable' }
    }
  }

  async renew (leases: ReadonlyArray<{ readonly policy: string, readonly userId: string, readonly leaseId: string }>, leaseMs: number): Promise<void> {
    const c = this.#ready()
    if (c === null) return
    await Promise.all(leases.map(async (l) => {
      const key = leaseKey(this.#prefix, l.policy, l.userId)
      // On the request path's client (its short timeout): a renewal that timed out in a busy
      // moment is tried again at once, not a third of a lease later, so a live lease does not
      // lapse because two renewals in a row met a slow turn.
      for (let attempt = 0; attempt < RENEW_ATTEMPTS; attempt++) {
        try {
          await c.rlLeaseRenew(key, leaseMs, l.leaseId)
          return
        } catch {
          this.#metrics.storeErrors.inc({ store: 'redis', operation: 'lease' })
        }
      }
    }))
  }

  async release (policy: string, userId: string, leaseId: string): Promise<void> {
    const c = this.#client
    if (c === null || c.status !== 'ready') return // it expires on its own
    await c.zrem(leaseKey(this.#prefix, policy, userId), leaseId).catch(() => {})
  }
}
