// The Lua scripts on a real Redis (shared server, own key prefix): the value format that says
// who owns a bucket, and the arithmetic shared with src/bucket/token-bucket.ts.
import t from 'tap'
import { Redis } from 'ioredis'
import { MemoryRedis } from '../src/stores/memory/index.ts'
import { defineScripts, ownerOf } from '../src/stores/redis/scripts.ts'
import { createRedisPrefix, TEST_REDIS_URL } from './helpers/stores.ts'

t.test('Lua scripts', async (t) => {
  const prefix = createRedisPrefix(t)
  const redis = defineScripts(new Redis(TEST_REDIS_URL)) // RESP3, as the gateway uses it
  t.teardown(() => redis.disconnect())
  const key = (name: string) => `${prefix}{default:${name}}`
  const decide = (name: string, cost: number, opts: { cap?: number, rate?: number, dbNow?: number, force?: 0 | 1, fence?: number } = {}) =>
    redis.rlDecide(key(name), cost, opts.cap ?? 10, opts.rate ?? 0.001, 60, opts.dbNow ?? Date.now(), opts.force ?? 0, opts.fence ?? 0)
  // One bucket through the write-behind script (as on a Cluster, where each key goes alone).
  const wbDecide = async (k: string, cost: number, cap: number, rate: number, ttl: number, seed: number | '') =>
    await redis.rlWbDecide(k, cost, cap, rate, ttl, seed)

  await t.test('take-over fence: Redis decides a bucket it takes over only after the fence, with what PostgreSQL granted meanwhile', async (t) => {
    await redis.set(key('f'), `5|${Date.now()}`) // a PostgreSQL snapshot: 5 tokens
    const [status, wait] = await decide('f', 1, { fence: 300 })
    t.equal(status, -2, 'the first decision starts the take-over and does not decide')
    t.equal(Number(wait), 300, 'ask again in the fence')
    t.equal(ownerOf((await redis.get(key('f')))!), 'redis', 'readers see a Redis-owned bucket: they ask Redis too')
    // Another gateway's PostgreSQL allowance (read before the take-over) lands now: charged here.
    t.equal(await redis.rlWrite(key('f'), `4|${Date.now()}`, 60, 1), 0)
    const [again, left] = await decide('f', 1, { fence: 300 })
    t.equal(again, -2, 'still fenced')
    t.ok(Number(left) > 0 && Number(left) <= 300, 'the rest of the fence: ' + left)
    const deadline = Date.now() + 5000
    let reply = await decide('f', 1, { fence: 300 })
    while (reply[0] === -2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Number(reply[1]) + 1))
      reply = await decide('f', 1, { fence: 300 })
    }
    t.equal(reply[0], 1, 'decided once the fence is over')
    t.ok(Math.abs(Number(reply[1]) - 3) < 0.01, 'from 5 tokens: 1 granted by PostgreSQL during the fence, 1 now (' + reply[1] + ')')
    t.equal(ownerOf((await redis.get(key('f')))!), 'redis')
    const [next] = await decide('f', 1, { fence: 300 })
    t.equal(next, 1, 'an owned bucket is decided at once')
  })

  await t.test('take-over fence: a bucket with no snapshot waits too; one taken back from a hand-back does not; a hand-back leaves a fenced bucket alone', async (t) => {
    const [fresh] = await decide('f-new', 1, { fence: 200 })
    t.equal(fresh, -2, 'no snapshot: fenced')
    t.same(await redis.rlHandBack(key('f-new'), 10, 0.001, 60), [0, ''], 'the hand-back skips a bucket still being taken over')
    t.match(await redis.get(key('f-new')), /\|t$/, 'still being taken over')
    await redis.set(key('f-m'), `4|${Date.now()}|m`)
    t.equal((await decide('f-m', 1, { fence: 200 }))[0], -1, 'being handed back: ask PostgreSQL')
    t.equal((await decide('f-m', 1, { fence: 200, force: 1 }))[0], 1, 'taken back by force: decided at once (a fence would restart with every hand-back pass)')
    t.match(await redis.get(key('f-m')), /\|r$/)
  })

  await t.test('decide, one request\'s buckets together (PostgreSQL down): all charged or none, each owner as DECIDE treats it; the in-memory twin agrees', async (t) => {
    const twin = new MemoryRedis({ now: () => Date.now() })
    // Rate 0: no refill between the calls, so Redis and the twin must agree exactly.
    const put = async (name: string, value: string | null): Promise<void> => {
      if (value === null) { await redis.del(key(name)); twin.del(key(name)) } else { await redis.set(key(name), value); twin.set(key(name), value) }
    }
    const group = async (names: string[], costs: number[], opts: { force?: 0 | 1, fence?: number } = {}): Promise<Array<number | string>> => {
      const dbNow = Date.now()
      const reply = await redis.rlDecideGroup(names.length, ...names.map(key), dbNow, opts.force ?? 0, opts.fence ?? 0, ...costs.flatMap((c) => [c, 10, 0, 60]))
      const mine = twin.decideGroupScript(names.map((n, i) => ({ key: key(n), cost: costs[i]!, cap: 10, rate: 0, ttl: 60 })), dbNow, opts.force === 1, opts.fence ?? 0)
      const expected = mine.kind === 'handing-back' ? [-1] : mine.kind === 'taking-over' ? [-2, 'wait'] : mine.kind === 'decided' ? [mine.allowed ? 1 : 0, ...mine.buckets.flatMap((b) => [b.canPay ? 1 : 0, b.tokens])] : ['?']
      t.same(reply.map((x, i) => reply[0] === -2 && i === 1 ? 'wait' : typeof x === 'string' ? Number(x) : x), expected, 'the twin answers the same')
      return reply
    }
    const value = async (name: string): Promise<string> => (await redis.get(key(name))) ?? ''
    const now = Date.now()

    await put('ga', `3|${now}`) // a PostgreSQL snapshot
    await put('gb', `1|${now}|r`) // Redis's own
    await put('gc', null) // none: full
    const charged = await group(['ga', 'gb', 'gc'], [1, 1, 1])
    t.same(charged.map(Number), [1, 1, 2, 1, 0, 1, 9], 'all can pay: all charged (a snapshot taken over, Redis\'s own, a full one)')
    t.match(await value('ga'), /^2\|.*\|r$/, 'each becomes Redis-owned')
    t.match(await value('gc'), /^9\|.*\|r$/)

    const refused = await group(['ga', 'gb', 'gc'], [1, 1, 1])
    t.same(refused.map(Number), [0, 1, 2, 0, 0, 1, 9], 'gb cannot pay: none charged, each reported as it stands')
    t.same([await value('ga'), await value('gc')].map((v) => v.split('|')[0]), ['2', '9'], 'ga and gc not charged')

    await put('gm', `4|${now}|m`)
    t.same(await group(['ga', 'gm'], [1, 1]), [-1], 'one being handed back: ask PostgreSQL, nothing written')
    t.match(await value('ga'), /^2\|/)
    t.same((await group(['ga', 'gm'], [1, 1], { force: 1 })).map(Number), [1, 1, 1, 1, 3], 'forced: taken back and decided at once')

    await put('gf', `5|${now}`)
    const fenced = await group(['ga', 'gf'], [1, 1], { fence: 200 })
    t.same([fenced[0], Number(fenced[1])], [-2, 200], 'a take-over fences the request')
    t.match(await value('gf'), /^5\|.*\|t$/, 'the snapshot is being taken over')
    t.match(await value('ga'), /^1\|.*\|r$/, 'the others untouched')
  })

  await t.test('value owners', async (t) => {
    t.equal(ownerOf('3|1700000000000'), 'postgres')
    t.equal(ownerOf('3|1700000000000|r'), 'redis')
    t.equal(ownerOf('3|1700000000000|m'), 'handing-back')
    t.equal(ownerOf('3|1700000000000|t'), 'redis', 'being taken over')
    t.equal(ownerOf('r'), 'postgres')
  })

  await t.test('write-back: newer snapshots replace older ones, never the reverse', async (t) => {
    t.equal(await redis.rlWrite(key('w'), '5|2000', 60, 1), 1, 'first write')
    t.equal(await redis.rlWrite(key('w'), '7|1000', 60, 1), 0, 'an older snapshot landing late is dropped')
    t.equal(await redis.get(key('w')), '5|2000')
    t.equal(await redis.rlWrite(key('w'), '6|2000', 60, 0), 0, 'same instant, more tokens: older')
    t.equal(await redis.rlWrite(key('w'), '4|2000', 60, 1), 1, 'same instant, fewer tokens: newer')
    t.equal(await redis.rlWrite(key('w'), '9|3000', 60, 1), 1, 'later instant')
    t.equal(await redis.get(key('w')), '9|3000')
  })

  await t.test('write-back never overwrites a Redis-owned bucket; it charges the allowance there', async (t) => {
    await redis.set(key('o'), '4|5000|r')
    t.equal(await redis.rlWrite(key('o'), '9|9000', 60, 1), 0)
    t.equal(await redis.get(key('o')), '3|5000|r', 'charged 1, still owned by Redis')
    t.equal(await redis.rlWrite(key('o'), '9|9000', 60, 0), 0, 'a denial charges nothing')
    await redis.set(key('m'), '4|5000|m')
    await redis.rlWrite(key('m'), '9|9000', 60, 2)
    t.equal(await redis.get(key('m')), '2|5000|m', 'also while being handed back')
  })

  await t.test('decide: new, from a PostgreSQL snapshot, and Redis-owned buckets', async (t) => {
    const first = await decide('d', 3)
    t.same([first[0], Number(first[1])], [1, 7], 'a new bucket starts full; integers and strings come back intact over RESP3')
    t.equal(typeof first[1], 'string')
    t.match(await redis.get(key('d')), /^7\|[0-9.]+\|r$/, 'now Redis-owned')
    t.same((await decide('d', 8))[0], 0, 'cannot pay 8 with 7')
    const seven = await decide('d', 7)
    t.ok(seven[0] === 1 && Number(seven[1]) < 0.01, 'pays 7 (plus the few ms of refill since)')

    // A PostgreSQL snapshot at database time 1000 holding 2 tokens, projected to "now" = 3000
    // at 1 token/s: 4 tokens.
    await redis.set(key('p'), '2|1000')
    const p = await decide('p', 1, { rate: 1, dbNow: 3000 })
    t.same([p[0], Number(p[1])], [1, 3], 'refilled on the database clock, then charged')
    t.ok(Math.abs(Number(p[2]) - Date.now()) < 5_000, 'restamped on the Redis clock')
  })

  await t.test('decide: fractions are carried; EPSILON lets a rounding shortfall pass', async (t) => {
    await redis.set(key('f'), `${1 - 1e-12}|1000`)
    t.equal((await decide('f', 1, { cap: 1, dbNow: 1000 }))[0], 1, '1 - 1e-12 tokens pay a cost of 1')
    await redis.set(key('g'), '0.3|1000')
    t.equal(Number((await decide('g', 0.1, { cap: 1, dbNow: 1000 }))[1]).toFixed(12), '0.200000000000', 'fractional cost, exact to 1e-12')
    await redis.set(key('h'), '0.999|1000')
    t.equal((await decide('h', 1, { cap: 1, dbNow: 1000 }))[0], 0, 'a real shortfall is refused')
  })

  await t.test('hand-back: mark, merge, finish', async (t) => {
    await redis.set(key('b'), '4|1000|r')
    const [status, tokens] = await redis.rlHandBack(key('b'), 10, 0.001, 60)
    t.equal(status, 1)
    t.ok(Number(tokens) >= 4 && Number(tokens) <= 10, 'refilled to now')
    t.match(await redis.get(key('b')), /\|m$/, 'marked as being handed back')
    t.same(await decide('b', 1), [-1, tokens, (await redis.get(key('b')))!.split('|')[1]], 'a decision is sent to PostgreSQL meanwhile')
    t.equal((await decide('b', 1, { force: 1 }))[0], 1, 'unless PostgreSQL is unreachable: Redis takes it back')
    t.match(await redis.get(key('b')), /\|r$/)
    t.equal(await redis.rlHandedBack(key('b'), '3|9000', 60), 0, 'taken back: not finished')
    t.match(await redis.get(key('b')), /\|r$/, 'still Redis-owned')

    await redis.rlHandBack(key('b'), 10, 0.001, 60)
    t.equal(await redis.rlHandedBack(key('b'), '3|9000', 60), 1)
    t.equal(await redis.get(key('b')), '3|9000', 'now a snapshot of the merged row')
    t.equal(await redis.rlHandedBack(key('b'), '2|9999', 60), 1, 'finishing twice is harmless')
    t.equal(await redis.get(key('b')), '3|9000', 'and changes nothing')
    t.same(await redis.rlHandBack(key('b'), 10, 0.001, 60), [0, ''], 'a snapshot is not Redis-owned: nothing to hand back')
  })

  await t.test('write-behind refund: gives the cost back, never above capacity; a missing bucket stays missing', async (t) => {
    const wb = `${prefix}wb{default:r}`
    await redis.set(wb, `4|${Date.now()}|w`)
    const [ok, tokens] = await redis.rlWbRefund(wb, 3, 10, 0.001, 60)
    t.equal(ok, 1)
    t.ok(Math.abs(Number(tokens) - 7) < 0.01, `4 + 3 (${tokens})`)
    t.match(await redis.get(wb), /\|w$/, 'still a write-behind value')
    t.ok(await redis.ttl(wb) > 50, 'with its TTL')
    t.ok(Math.abs(Number((await redis.rlWbRefund(wb, 8, 10, 0.001, 60))[1]) - 10) < 1e-9, 'capped at capacity')
    t.same(await redis.rlWbRefund(`${prefix}wb{default:gone}`, 1, 10, 0.001, 60), [0, '', ''], 'missing: nothing given back')
    t.equal(await redis.exists(`${prefix}wb{default:gone}`), 0, 'and nothing created')
  })

  await t.test('write-behind decide: the token bucket on the Redis clock (refill, capacity, EPSILON, cost), a miss, a seed used once', async (t) => {
    const wb = (name: string) => `${prefix}wb{default:${name}}`
    t.same(await wbDecide(wb('miss'), 1, 10, 1, 60, ''), [-2, '', '', 0], 'no state, no seed: a miss')
    t.equal(await redis.exists(wb('miss')), 0, 'and nothing created')

    const [seededOk, seededLeft, seededAt, seeded] = await wbDecide(wb('s'), 1, 10, 1, 60, 25)
    t.same([seededOk, seeded], [1, 1], 'seeded by this call, then charged')
    t.equal(Number(seededLeft), 9, 'the seed is capped at capacity before the charge')
    const [, , again, seededAgain] = await wbDecide(wb('s'), 1, 10, 1, 60, 10)
    t.equal(seededAgain, 0, 'a state exists: the second seed is not used')
    t.ok(Number(again) >= Number(seededAt), 'the stamp never goes backwards')
    t.match(await redis.get(wb('s')), /^[^|]+\|[^|]+\|w$/, 'a write-behind value')
    t.ok(await redis.ttl(wb('s')) > 50, 'with its TTL')

    // A state 2 s in the past at 1 token per second: 3.25 + 2 refilled, fractions carried.
    await redis.set(wb('r'), `3.25|${Date.now() - 2000}|w`)
    const [ok, left] = await wbDecide(wb('r'), 1, 10, 1, 60, '')
    t.equal(ok, 1)
    t.ok(Number(left) >= 4.25 - 0.01 && Number(left) < 4.25 + 0.2, `3.25 + 2 - 1 (${left})`)
    await redis.set(wb('cap'), `9|${Date.now() - 60_000}|w`)
    t.ok(Math.abs(Number((await wbDecide(wb('cap'), 2, 10, 1, 60, ''))[1]) - 8) < 1e-9, 'refill stops at capacity')

    const future = Date.now() + 60_000 // a value stamped ahead of this clock (another Redis's, after a failover)
    await redis.set(wb('e'), `${1 - 1e-10}|${future}|w`)
    const [epsOk, epsLeft, epsAt] = await wbDecide(wb('e'), 1, 10, 0, 60, '')
    t.equal(epsOk, 1, 'a rounding shortfall within EPSILON passes')
    t.ok(Number(epsLeft) < 0 && Number(epsLeft) > -1e-9, `and is charged (${epsLeft})`)
    t.equal(Number(epsAt), future, 'time never runs backwards: decided at the later stamp')
    const [denied, deniedLeft] = await wbDecide(wb('e'), 1, 10, 0, 60, '')
    t.equal(denied, 0, 'nothing left: refused')
    t.equal(Number(deniedLeft), Number(epsLeft), 'a refusal charges nothing')

    await redis.set(wb('bad'), 'garbage')
    t.same((await wbDecide(wb('bad'), 1, 10, 1, 60, ''))[0], -2, 'an unreadable value is a miss, not an error')
  })

  await t.test('write-behind decide, several buckets in one call: the same as one call per bucket, in order', async (t) => {
    const wb = (name: string) => `${prefix}wb{batch:${name}}`
    const now = Date.now()
    // The same requests twice: once as one call, once a call each, on twin states.
    const states: Array<[string, string | null]> = [['a', `2|${now}|w`], ['b', null], ['c', null], ['d', `0.5|${now - 1000}|w`]]
    const requests: Array<[string, number, number | '']> = [
      ['a', 1, ''], ['b', 1, ''], ['a', 1, ''], ['c', 2, 7], ['a', 1, ''], ['c', 1, 99], ['d', 1, ''], ['d', 1, '']
    ]
    for (const run of ['one', 'each']) {
      for (const [name, value] of states) {
        if (value === null) await redis.del(wb(run + name))
        else await redis.set(wb(run + name), value)
      }
    }
    const keys = requests.map(([name]) => wb('one' + name))
    const args = requests.flatMap(([, cost, seed]) => [cost, 10, 0.5, 60, seed])
    const flat = await redis.rlWbDecideMany(requests.length, ...keys, ...args)
    t.equal(flat.length, 4 * requests.length, 'four replies per key')
    const batched = requests.map((_, i) => flat.slice(4 * i, 4 * i + 4))
    const single = []
    for (const [name, cost, seed] of requests) single.push(await wbDecide(wb('each' + name), cost, 10, 0.5, 60, seed))
    t.same(batched.map((r) => [r[0], r[3]]), [[1, 0], [-2, 0], [1, 0], [1, 1], [0, 0], [1, 0], [1, 0], [0, 0]],
      'a: 2 tokens, the third request refused; b: a miss; c: seeded once (7 tokens), the second seed unused; d: 0.5 + 0.5 refilled, then empty')
    t.same(batched.map((r) => [r[0], r[3]]), single.map((r) => [r[0], r[3]]), 'the same verdicts as one call each')
    for (let i = 0; i < requests.length; i++) {
      if (batched[i]![0] === -2) continue
      // Refill between the two runs' calls (a few ms at 0.5/s) is the only difference allowed.
      t.ok(Math.abs(Number(batched[i]![1]) - Number(single[i]![1])) < 0.05, `request ${i}: tokens ${batched[i]![1]} and ${single[i]![1]}`)
    }
    t.equal(batched[0]![2], batched[2]![2], 'one instant of the Redis clock for the whole call')
    t.equal(await redis.exists(wb('oneb')), 0, 'a miss creates nothing')
  })

  await t.test('write-behind decide, one request\'s buckets together: all charged or none, a miss writes nothing; the in-memory twin agrees', async (t) => {
    const wb = (name: string) => `${prefix}wb{group:${name}}`
    const twin = new MemoryRedis({ now: () => Date.now() })
    const now = Date.now()
    // Rate 0: no refill between the calls, so the two runs must agree exactly.
    const setAll = async (values: Record<string, string | null>): Promise<void> => {
      for (const [name, value] of Object.entries(values)) {
        if (value === null) { await redis.del(wb(name)); twin.del(wb(name)) } else { await redis.set(wb(name), value); twin.set(wb(name), value) }
      }
    }
    const group = async (buckets: Array<[string, number, number | '']>): Promise<Array<number | string>> => {
      const reply = await redis.rlWbDecideGroups(buckets.length, ...buckets.map(([name]) => wb(name)), 1, buckets.length, ...buckets.flatMap(([, cost, seed]) => [cost, 10, 0, 60, seed]))
      const mine = twin.wbDecideGroupScript(buckets.map(([name, cost, seed]) => ({ key: wb(name), cost, cap: 10, rate: 0, ttl: 60, seed: seed === '' ? null : seed })))
      if ('missing' in mine) {
        t.same(reply, [-2, ...mine.missing.flatMap((m) => [m ? 1 : 0, '', '', 0])], 'the twin answers the same')
      } else {
        const expected = [mine.charged ? 1 : 0, ...mine.buckets.flatMap(([pay, tokens, , seeded]) => [pay, tokens, 'at', seeded])]
        t.same(reply.map((x, i) => i % 4 === 3 ? 'at' : typeof x === 'string' ? Number(x) : x), expected, 'the twin answers the same')
      }
      return reply
    }
    const tokens = async (name: string): Promise<number> => Number((await redis.get(wb(name)))?.split('|')[0])

    await setAll({ a: `3|${now}|w`, b: `1|${now}|w`, c: null })
    const charged = await group([['a', 1, ''], ['b', 1, '']])
    t.same([charged[0], charged[1], charged[5]], [1, 1, 1], 'both can pay: all charged')
    t.same([await tokens('a'), await tokens('b')], [2, 0])
    t.equal(charged[3], charged[7], 'one instant of the Redis clock')

    const refused = await group([['a', 1, ''], ['b', 1, '']])
    t.same([refused[0], refused[1], refused[5]], [0, 1, 0], 'b cannot pay: none charged; a could')
    t.same([Number(refused[2]), Number(refused[6])], [2, 0], 'each reported as it stands')
    t.same([await tokens('a'), await tokens('b')], [2, 0], 'a is not charged')

    const before = await redis.get(wb('a'))
    t.same(await group([['a', 1, ''], ['c', 1, '']]), [-2, 0, '', '', 0, 1, '', '', 0], 'c is missing without a seed: a miss naming it')
    t.equal(await redis.get(wb('a')), before, 'nothing written: a untouched')
    t.equal(await redis.exists(wb('c')), 0, 'and c not created')

    const seeded = await group([['a', 3, ''], ['c', 1, 4]])
    t.same([seeded[0], seeded[1], seeded[5], seeded[8]], [0, 0, 1, 1], 'a cannot pay 3: refused; c seeded by the call')
    t.equal(await tokens('c'), 4, 'a refused call keeps the seed, uncharged')
    t.equal(await tokens('a'), 2, 'and charges nothing')
    const again = await group([['a', 2, ''], ['c', 1, 99]])
    t.same([again[0], again[8]], [1, 0], 'charged; the second seed unused')
    t.same([await tokens('a'), await tokens('c')], [0, 3])

    // Several requests' groups in one call (one turn of the event loop), one after another.
    await setAll({ p: `2|${now}|w`, q: `5|${now}|w`, x: null })
    const flat = await redis.rlWbDecideGroups(5, wb('p'), wb('q'), wb('p'), wb('x'), wb('q'), 4, 2, 1, 1, 1,
      ...[[1, ''], [1, ''], [2, ''], [1, ''], [1, '']].flatMap(([cost, seed]) => [cost!, 10, 0, 60, seed!]))
    t.equal(flat.length, 4 + 4 * 5, 'one status per group and four replies per key')
    t.same([flat[0], flat[9], flat[14], flat[19]], [1, 0, -2, 1], 'p+q charged; p alone then cannot pay 2 (the first group left 1); x a miss; q decided after it')
    t.same([await tokens('p'), await tokens('q')], [1, 3], 'p charged once, q twice')
    t.equal(flat[3], flat[22], 'one instant of the Redis clock for the whole call')
  })
})
