import t from 'tap'
import fc from 'fast-check'
import { consume, fullRefillSeconds, msUntilAffordable, msUntilFull, tokensAt } from '../src/core/token-bucket.ts'
import type { BucketSnapshot, Policy } from '../src/core/domain.ts'

const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1 }

t.test('a new bucket starts full and pays its capacity, then refuses', async (t) => {
  let snap: BucketSnapshot | null = null
  let allowed = 0
  for (let i = 0; i < 15; i++) {
    const r = consume(snap, policy, 1, 1000)
    snap = r.snapshot
    if (r.allowed) allowed++
  }
  t.equal(allowed, 10)
  t.equal(snap!.tokens, 0)
})

t.test('refill is linear in time and capped at capacity', async (t) => {
  const empty = { tokens: 0, atMs: 0 }
  t.equal(tokensAt(empty, policy, 2500), 2.5, 'fractions are carried')
  t.equal(tokensAt(empty, policy, 60_000), 10, 'capped')
  t.equal(tokensAt({ tokens: 4, atMs: 100 }, policy, 50), 4, 'a clock behind the snapshot adds nothing')
})

t.test('a denial changes nothing and time never runs backwards', async (t) => {
  const r = consume({ tokens: 0.5, atMs: 1000 }, policy, 1, 900)
  t.notOk(r.allowed)
  t.same(r.snapshot, { tokens: 0.5, atMs: 1000 })
})

t.test('cost, retry and reset arithmetic', async (t) => {
  const p: Policy = { name: 'p', capacity: 5, refillPerSecond: 2 }
  const r = consume({ tokens: 2, atMs: 0 }, p, 3, 0)
  t.notOk(r.allowed, 'cannot pay 3 with 2')
  t.equal(msUntilAffordable(2, p, 3), 500)
  t.equal(msUntilAffordable(3, p, 3), 0)
  t.equal(msUntilFull(2, p), 1500)
  t.equal(msUntilFull(5, p), 0)
  t.equal(fullRefillSeconds(p), 3)
  t.equal(fullRefillSeconds({ name: 'x', capacity: 1, refillPerSecond: 100 }), 1, 'at least one second')
})

// A schedule of requests: gaps between them (ms) and their costs.
const policies = fc.record({
  capacity: fc.integer({ min: 1, max: 50 }),
  refillPerSecond: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.double({ min: 0.01, max: 50, noNaN: true }))
}).map((p) => ({ name: 'p', ...p }))

const schedules = fc.array(fc.record({ gapMs: fc.integer({ min: 0, max: 3000 }), cost: fc.integer({ min: 1, max: 5 }) }), { minLength: 1, maxLength: 200 })

t.test('property: allowed cost in any window never exceeds capacity + rate x window', async (t) => {
  fc.assert(fc.property(policies, schedules, (p, steps) => {
    let snap: BucketSnapshot | null = null
    let now = 0
    const allowed: Array<{ at: number, cost: number }> = []
    for (const s of steps) {
      now += s.gapMs
      const r = consume(snap, p, s.cost, now)
      snap = r.snapshot
      if (r.allowed) allowed.push({ at: now, cost: s.cost })
    }
    // every window [allowed[i].at, allowed[j].at]
    for (let i = 0; i < allowed.length; i++) {
      let sum = 0
      for (let j = i; j < allowed.length; j++) {
        sum += allowed[j]!.cost
        const windowSeconds = (allowed[j]!.at - allowed[i]!.at) / 1000
        if (sum > p.capacity + p.refillPerSecond * windowSeconds + 1e-6) return false
      }
    }
    return true
  }), { numRuns: 300 })
  t.pass('safety held for every generated schedule')
})

/** The smallest double above a non-negative x. */
function nextUp (x: number): number {
  const view = new DataView(new ArrayBuffer(8))
  view.setFloat64(0, x)
  view.setBigUint64(0, view.getBigUint64(0) + 1n)
  return view.getFloat64(0)
}

t.test('property: after an empty bucket waits k/rate seconds, exactly k more requests pass', async (t) => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 50 }),
    fc.integer({ min: 1, max: 20 }),
    fc.integer({ min: 1, max: 50 }),
    // Epoch-millisecond timestamps as the database hands them over (fractional: µs).
    fc.double({ min: 0, max: 4e12, noNaN: true }),
    (capacity, rate, kRaw, start) => {
      const p: Policy = { name: 'p', capacity, refillPerSecond: rate }
      const k = Math.min(kRaw, capacity)
      const empty: BucketSnapshot = { tokens: 0, atMs: start }
      // `start + k/rate` rounds to the nearest double, which may fall short of k/rate seconds
      // later: then the caller did not really wait k/rate. Take the first instant that did.
      let later = start + (k * 1000) / rate
      while ((later - start) * rate < k * 1000) later = nextUp(later)
      let snap: BucketSnapshot = empty
      let passed = 0
      for (let i = 0; i < k + 3; i++) {
        const r = consume(snap, p, 1, later)
        snap = r.snapshot
        if (r.allowed) passed++
      }
      return passed === k
    }), { numRuns: 500 })
  t.pass('no refill was lost to rounding')
})

t.test('property: fractional refill is carried across many small steps', async (t) => {
  fc.assert(fc.property(fc.integer({ min: 2, max: 1000 }), (steps) => {
    // rate 1/s, 1 token needed, time advanced in `steps` equal slices of one second
    let snap: BucketSnapshot = { tokens: 0, atMs: 0 }
    let allowedAt = -1
    for (let i = 1; i <= steps; i++) {
      const r = consume(snap, policy, 1, (1000 * i) / steps)
      snap = r.snapshot
      if (r.allowed) { allowedAt = i; break }
    }
    return allowedAt === steps
  }), { numRuns: 200 })
  t.pass('a token accrued in slices is paid out exactly when complete')
})

t.test('property: a caller below the rate is never refused, even starting empty', async (t) => {
  fc.assert(fc.property(policies, fc.integer({ min: 1, max: 100 }), fc.double({ min: 1, max: 3, noNaN: true }), (p, n, slack) => {
    const gap = (1000 / p.refillPerSecond) * slack // slower than the rate
    let snap: BucketSnapshot = { tokens: 0, atMs: 0 }
    for (let i = 1; i <= n; i++) {
      const r = consume(snap, p, 1, gap * i)
      if (!r.allowed && p.capacity >= 1) return false
      snap = r.snapshot
    }
    return true
  }), { numRuns: 300 })
  t.pass('never refused')
})
