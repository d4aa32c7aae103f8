// The over-limit cache in isolation: time is a parameter, the truth is the pure bucket.
import fc from 'fast-check'
import t from 'tap'
import { consume, tokensAt } from '../src/core/token-bucket.ts'
import type { BucketSnapshot, Policy } from '../src/core/domain.ts'
import { DenyCache } from '../src/limiter/steps/deny-cache.ts'

const policy: Policy = { name: 'default', capacity: 10, refillPerSecond: 1 }
const empty: BucketSnapshot = { tokens: 0, atMs: 1_000_000 }

t.test('refuses while the snapshot cannot pay, with the tokens projected for now', async (t) => {
  const cache = new DenyCache(10, 2)
  cache.remember('k', empty, policy, 1, empty.atMs)
  t.equal(cache.size, 1)
  t.equal(cache.refuse('k', policy, 1, empty.atMs + 500), 0.5, 'half a token after 500 ms: refused')
  t.equal(cache.refuse('other', policy, 1, empty.atMs + 500), undefined, 'unknown key: the stores decide')
  t.equal(cache.refuse('k', policy, 0.25, empty.atMs + 500), undefined, 'a cheaper request that can pay is not refused')
  t.equal(cache.size, 0, 'and the entry, now useless, is gone')
})

t.test('never refuses within the margin of the bucket paying', async (t) => {
  const cache = new DenyCache(10, 2)
  cache.remember('k', empty, policy, 1, empty.atMs)
  t.not(cache.refuse('k', policy, 1, empty.atMs + 997), undefined, '3 ms short of a token: refused')
  t.equal(cache.refuse('k', policy, 1, empty.atMs + 998.5), undefined, '1.5 ms short, inside the 2 ms margin: the stores decide')
})

t.test('keeps only snapshots that refuse, and a paying one replaces an older entry', async (t) => {
  const cache = new DenyCache(10, 2)
  cache.remember('k', { tokens: 3, atMs: empty.atMs }, policy, 1, empty.atMs)
  t.equal(cache.size, 0, 'a bucket that can pay is not kept')
  cache.remember('k', empty, policy, 1, empty.atMs)
  cache.remember('k', { tokens: 5, atMs: empty.atMs + 10 }, policy, 1, empty.atMs + 10)
  t.equal(cache.refuse('k', policy, 1, empty.atMs + 20), undefined, 'the newer, paying snapshot won')
})

t.test('bounded: least recently used goes first; forget drops a key', async (t) => {
  const cache = new DenyCache(3, 2)
  for (const k of ['a', 'b', 'c']) cache.remember(k, empty, policy, 1, empty.atMs)
  t.not(cache.refuse('a', policy, 1, empty.atMs), undefined, 'a used: now the most recent')
  cache.remember('d', empty, policy, 1, empty.atMs)
  t.equal(cache.size, 3)
  t.equal(cache.refuse('b', policy, 1, empty.atMs), undefined, 'b, least recently used, was evicted')
  for (const k of ['a', 'c', 'd']) t.not(cache.refuse(k, policy, 1, empty.atMs), undefined, `${k} kept`)
  cache.forget('a')
  t.equal(cache.refuse('a', policy, 1, empty.atMs), undefined, 'forgotten')
  t.throws(() => new DenyCache(0, 2), RangeError)
})

t.test('property: never refuses a caller who could pay, whatever snapshot it kept', async (t) => {
  // The truth is a bucket spent by requests of varying cost at increasing times; the cache is
  // offered the truth at some of those instants (snapshots get older as the truth moves on),
  // and is asked later, often within a few ms of the truth becoming able to pay, with a
  // database-clock estimate up to the margin behind the true time.
  const margin = 2
  let refusals = 0
  fc.assert(fc.property(
    fc.array(fc.record({ gapMs: fc.integer({ min: 0, max: 300 }), cost: fc.constantFrom(0.5, 1, 2, 3), offer: fc.boolean() }), { minLength: 1, maxLength: 40 }),
    fc.oneof(
      fc.integer({ min: 0, max: 5_000 }).map((ms) => ({ afterLast: ms })),
      fc.double({ min: -5, max: 5, noNaN: true }).map((ms) => ({ aroundPaying: ms })),
      fc.double({ min: -500, max: 0, noNaN: true }).map((ms) => ({ aroundPaying: ms }))),
    fc.double({ min: 0, max: margin, noNaN: true }),
    fc.constantFrom(0.5, 1, 2),
    fc.constantFrom(0.5, 1, 3),
    fc.boolean(),
    (steps, when, lagMs, askCost, rate, offerLast) => {
      const p: Policy = { name: 'p', capacity: 5, refillPerSecond: rate }
      const cache = new DenyCache(100, margin)
      let truth: BucketSnapshot | null = null
      let now = 0
      for (const step of steps) {
        now += step.gapMs
        truth = consume(truth, p, step.cost, now).snapshot
        if (step.offer) cache.remember('k', truth, p, step.cost, now)
      }
      if (offerLast) cache.remember('k', truth!, p, askCost, now)
      if ('afterLast' in when) now += when.afterLast
      else now = Math.max(now, truth!.atMs + (Math.max(0, askCost - truth!.tokens) * 1000) / rate + when.aroundPaying)
      const refused = cache.refuse('k', p, askCost, now - lagMs)
      if (refused !== undefined) refusals++
      const truthPays = tokensAt(truth!, p, now) + 1e-9 >= askCost
      return refused === undefined || !truthPays
    }
  ), { numRuns: 3_000 })
  t.ok(refusals > 100, `the cache did refuse in many runs (${refusals})`)
})
