// A request charging two write-behind buckets (a burst and a per-minute limit, decided together
// in one atomic Redis call) and a strict daily quota together (group.ts, #mixed),
// on the in-memory twins with a controlled clock: fast-check interleaves concurrent requests,
// clock advances, flushes and 5xx refunds (the burst refunds them), and after every step each
// bucket must hold exactly what a reference bucket holds when it replays only the allowed
// requests' charges and the refunds: all or nothing (a refused request leaves no charge in
// either store), no refund beyond capacity, and never an allowance the bucket could not pay.
import fc from 'fast-check'
import t from 'tap'
import type { Policy } from '../src/core/domain.ts'
import { tokensAt } from '../src/core/token-bucket.ts'
import type { Limiter } from '../src/limiter/limiter.ts'
import { parseValue } from '../src/stores/memory/index.ts'
import { writeBehindTwins } from './helpers/twins.ts'

const burst: Policy = { name: 'burst', capacity: 3, refillPerSecond: 1, cacheName: 'burst@3/1', consistency: 'write-behind', refund5xx: true }
const minute: Policy = { name: 'minute', capacity: 4, refillPerSecond: 0.5, cacheName: 'minute@4/0.5', consistency: 'write-behind' }
const daily: Policy = { name: 'daily', capacity: 5, refillPerSecond: 0.2, cacheName: 'daily@5/0.2', consistency: 'strict' }
const CALLERS = ['a', 'b'] as const
const TOLERANCE = 1e-6

/** A token bucket replayed from events: a charge must be payable (else the gateway over-admitted). */
class Reference {
  tokens: number
  at = 0
  constructor (readonly policy: Policy) { this.tokens = policy.capacity }
  #refill (now: number): void {
    this.tokens = Math.min(this.policy.capacity, this.tokens + ((now - this.at) * this.policy.refillPerSecond) / 1000)
    this.at = now
  }

  charge (now: number, cost: number): void {
    this.#refill(now)
    if (this.tokens < cost - TOLERANCE) throw new Error(`${this.policy.name}: allowed ${cost} with ${this.tokens} tokens`)
    this.tokens -= cost
  }

  refund (now: number, cost: number): void {
    this.#refill(now)
    this.tokens = Math.min(this.policy.capacity, this.tokens + cost)
  }

  now (now: number): number {
    this.#refill(now)
    return this.tokens
  }
}

t.test('property: two write-behind buckets and a strict one on one request are charged all or nothing, exactly', async (t) => {
  let runs = 0
  let refusedByBurst = 0
  let refusedByDaily = 0
  let refusedByMinute = 0
  let refunds = 0
  const op = fc.oneof(
    fc.record({ kind: fc.constant('requests' as const), caller: fc.constantFrom(...CALLERS), n: fc.integer({ min: 1, max: 4 }) }),
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 1, max: 4000 }) }),
    fc.record({ kind: fc.constant('5xx' as const), caller: fc.constantFrom(...CALLERS) }),
    fc.record({ kind: fc.constant('flush' as const) }))
  await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 3, maxLength: 30 }), async (ops) => {
    runs++
    const { clock, pg, redis, sync, limiter } = writeBehindTwins()
    const refs = new Map(CALLERS.map((c) => [c, { burst: new Reference(burst), minute: new Reference(minute), daily: new Reference(daily) }]))
    const lastAllowed = new Map<string, Awaited<ReturnType<Limiter['checkAll']>>>()
    try {
      for (const o of ops) {
        if (o.kind === 'advance') {
          clock.now += o.ms
        } else if (o.kind === 'flush') {
          await sync.flush()
        } else if (o.kind === '5xx') {
          const verdict = lastAllowed.get(o.caller)
          if (verdict === undefined) continue
          lastAllowed.delete(o.caller)
          await limiter.refund(verdict, '5xx')
          refs.get(o.caller)!.burst.refund(clock.now, 1)
          refunds++
        } else {
          const verdicts = await Promise.all(Array.from({ length: o.n }, async () =>
            await limiter.checkAll([{ policy: burst, userId: o.caller, cost: 1 }, { policy: minute, userId: o.caller, cost: 1 }, { policy: daily, userId: o.caller, cost: 1 }], o.caller)))
          for (const v of verdicts) {
            if (v.allowed) {
              refs.get(o.caller)!.burst.charge(clock.now, 1)
              refs.get(o.caller)!.minute.charge(clock.now, 1)
              refs.get(o.caller)!.daily.charge(clock.now, 1)
              lastAllowed.set(o.caller, v)
            } else if (v.violated.some((d) => d.policy.name === 'burst')) refusedByBurst++
            else if (v.violated.some((d) => d.policy.name === 'minute')) refusedByMinute++
            else refusedByDaily++
          }
        }
        for (const caller of CALLERS) {
          const ref = refs.get(caller)!
          for (const policy of [burst, minute]) {
            const value = parseValue(redis.get(redis.wbKey(policy.cacheName!, caller)))
            const inRedis = value === null ? policy.capacity : tokensAt({ tokens: value.tokens, atMs: value.at }, policy, clock.now)
            const want = ref[policy.name as 'burst' | 'minute'].now(clock.now)
            if (Math.abs(inRedis - want) > TOLERANCE) throw new Error(`${caller}: ${policy.name} holds ${inRedis} in Redis, the allowed requests and refunds leave ${want}`)
          }
          const row = pg.row('daily', caller)
          const inPostgres = row === undefined ? daily.capacity : tokensAt(row, daily, clock.now)
          const wantDaily = ref.daily.now(clock.now)
          if (Math.abs(inPostgres - wantDaily) > TOLERANCE) throw new Error(`${caller}: daily holds ${inPostgres} in PostgreSQL, the allowed requests leave ${wantDaily}`)
        }
      }
    } finally {
      await limiter.close()
    }
  }), { numRuns: Number(process.env.MODEL_RUNS ?? 200) })
  t.ok(refusedByBurst > 0 && refusedByMinute > 0 && refusedByDaily > 0,
    `every bucket refused requests (burst ${refusedByBurst}, minute ${refusedByMinute}, daily ${refusedByDaily}) over ${runs} runs`)
  t.ok(refunds > 0, `and 5xx refunds were given (${refunds})`)
})
