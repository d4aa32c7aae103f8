// Pure pieces with time as a parameter: the database clock estimate, the circuit breaker, and
// the group-commit batcher's ordering.
import t from 'tap'
import { DbClock } from '../src/limiter/db-clock.ts'
import { CircuitBreaker } from '../src/stores/breaker.ts'
import { Batcher } from '../src/stores/batcher.ts'
import { decode, encode } from '../src/stores/redis/snapshot-cache.ts'

t.test('DbClock keeps the largest offset seen and follows drift across windows', async (t) => {
  let local = 1_000_000
  const clock = new DbClock(10_000, () => local)
  t.equal(clock.nowMs(), local, 'no sample: the local clock')
  clock.observe(local + 500 - 3) // reply took 3 ms to arrive: offset understated by 3
  clock.observe(local + 500 - 1)
  clock.observe(local + 500 - 7)
  t.equal(clock.offsetMs, 499, 'the closest (largest) sample wins')
  local += 10_001
  clock.observe(local + 200)
  t.equal(clock.offsetMs, 499, 'the previous window still counts')
  local += 10_001
  clock.observe(local + 200)
  t.equal(clock.offsetMs, 200, 'after two windows the old offset is gone')
})

t.test('CircuitBreaker opens after the threshold, probes once, backs off', async (t) => {
  const b = new CircuitBreaker({ threshold: 2, openMs: 100, maxOpenMs: 300 })
  t.ok(b.allow(0))
  b.failure(0)
  t.ok(b.allow(0), 'below the threshold')
  b.failure(0)
  t.notOk(b.allow(50), 'open')
  t.ok(b.allow(100), 'half-open: one probe')
  t.notOk(b.allow(100), 'only one probe at a time')
  b.failure(100)
  t.notOk(b.allow(250), 'failed probe doubles the back-off')
  t.ok(b.allow(300))
  b.success()
  t.ok(b.allow(300) && b.allow(300), 'closed again')
})

t.test('Batcher: one call per batch, results matched to callers in order', async (t) => {
  const calls: number[][] = []
  const batcher = new Batcher<number, number>(async (items) => { calls.push(items); return items.map((i) => i * 10) }, { maxSize: 4, maxInFlight: 1, windowMs: 0 })
  const results = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => batcher.submit(i)))
  t.same(results, [10, 20, 30, 40, 50, 60])
  t.same(calls, [[1, 2, 3, 4], [5, 6]], 'a full batch leaves at once, the rest together')
})

t.test('Batcher: an item held for a window leaves early with one that may not wait, or when told to', async (t) => {
  const calls: number[][] = []
  const batcher = new Batcher<number, number>(async (items) => { calls.push(items); return items }, { maxSize: 8, maxInFlight: 2, windowMs: 0 })
  // Held for a minute: only the item after it, or flushNow, can send it within the test's timeout.
  const held = batcher.submit(1, 60_000)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(calls, [], 'held, not sent on the next turn')
  t.equal(batcher.idle, false)
  t.same(await Promise.all([held, batcher.submit(2)]), [1, 2])
  t.same(calls, [[1, 2]], 'one batch, on the next turn')
  const again = batcher.submit(3, 60_000)
  batcher.flushNow()
  t.equal(await again, 3)
  t.same(calls, [[1, 2], [3]])
  await new Promise((resolve) => setImmediate(resolve)) // its slot is given back after its callers resolve
  t.equal(batcher.idle, true)
})

t.test('Batcher: a failed round trip fails exactly its own callers', async (t) => {
  let n = 0
  const batcher = new Batcher<number, number>(async (items) => { if (n++ === 0) throw new Error('boom'); return items }, { maxSize: 2, maxInFlight: 2, windowMs: 0 })
  const settled = await Promise.allSettled([1, 2, 3].map((i) => batcher.submit(i)))
  t.same(settled.map((s) => s.status), ['rejected', 'rejected', 'fulfilled'])
})

t.test('Batcher: an item that waited past maxWaitMs for a slot is refused, not sent', async (t) => {
  let release!: () => void
  const blocked = new Promise<void>((resolve) => { release = resolve })
  const calls: number[][] = []
  const batcher = new Batcher<number, number>(async (items) => { calls.push(items); if (items[0] === 1) await blocked; return items }, {
    maxSize: 10, maxInFlight: 1, windowMs: 0, maxWaitMs: 30, expired: (waited) => new Error(`expired after ${waited >= 30 ? '30+' : waited} ms`)
  })
  const first = batcher.submit(1)
  await new Promise((resolve) => setImmediate(resolve)) // the first batch is in flight, holding the only slot
  const queued = [batcher.submit(2), batcher.submit(3)]
  const started = performance.now()
  while (performance.now() - started <= 40) await new Promise((resolve) => setTimeout(resolve, 10)) // the queued items are now past 30 ms
  const fresh = batcher.submit(4)
  release()
  t.equal(await first, 1)
  const settled = await Promise.allSettled(queued)
  t.same(settled.map((s) => s.status === 'rejected' ? (s.reason as Error).message : s.value), ['expired after 30+ ms', 'expired after 30+ ms'])
  t.equal(await fresh, 4, 'a fresh item in the same batch is sent')
  t.same(calls, [[1], [4]], 'the expired items never reached the store')
})

t.test('snapshot encoding round-trips and refuses garbage', async (t) => {
  t.same(decode(encode({ tokens: 2.75, atMs: 1795748212281.123 })), { kind: 'snapshot', tokens: 2.75, atMs: 1795748212281.123 })
  t.equal(decode('garbage'), null)
  t.equal(decode('x|1'), null)
})
