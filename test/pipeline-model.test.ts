// A model-based property test of the whole decision flow, without servers: 2-3 gateways
// (Limiter instances) share one in-memory PostgreSQL and one in-memory Redis
// (src/stores/memory). fast-check interleaves requests (one at a time, or bursts decided
// concurrently), clock advances, PostgreSQL and Redis outages, Redis restarted empty, and
// "let recovery run". Checked against a reference:
//
//   (a) safety: for every caller, the cost of the requests allowed in any window [t1, t2] is at
//       most capacity + rate * (t2 - t1) (exactly, over every window of the allowed history);
//   (b) no refund after an outage: once PostgreSQL is back and the hand-back is done, each
//       caller's PostgreSQL row holds no more tokens than a bucket replayed from the allowed
//       history (what was spent during the outage stays spent).
//
// FAIL_MODE is closed (the only mode in which the bound is the configured one whatever the
// fleet: local divides it per replica, open lifts it); a StoreUnavailableError is a refusal.
//
// The faults are those the design claims to survive (docs/reliability.md). Its deliberate
// limits are kept out by preconditions computed from the stores' state, each named below
// (gateway clocks run up to 1 s ahead of or behind the database's: before its first PostgreSQL
// reply a gateway does not refill a snapshot Redis takes over, so a fast clock refunds nothing):
//   - Redis unreachable while it owns buckets and PostgreSQL answers: PostgreSQL decides
//     without Redis's spending ("PostgreSQL is the best store left").
//   - Redis deciding while its snapshot of a bucket is older than PostgreSQL's row because Redis
//     restarted empty while PostgreSQL decided, before the re-seed has run (src/limiter/reseed.ts:
//     PostgreSQL's spent buckets written back; then PostgreSQL fails, or a gateway still
//     believes it down from an earlier outage): Redis takes over from a full bucket, refunding
//     what PostgreSQL spent before the restart ("Redis restarted empty"). So PostgreSQL goes
//     down, and Redis comes back, only where no gateway could let Redis decide on a snapshot the
//     restart left stale; a done re-seed clears that (if it wrote too little, Redis decides from
//     a full bucket and (a) fails). Snapshots left stale by an outage (writes that did not reach
//     Redis) are not kept out: the cache writes them when Redis is back (unsent-snapshots.ts).
//   - Redis restarted empty while it owns buckets: what it spent is gone.
//   - Concurrent requests on gateways that disagree about PostgreSQL (split brain), which may
//     race a PostgreSQL decision with Redis taking the bucket over.
import fc from 'fast-check'
import t from 'tap'
import type { Config } from '../src/config/schema.ts'
import type { Policy } from '../src/core/domain.ts'
import { StoreUnavailableError } from '../src/core/errors.ts'
import { tokensAt } from '../src/core/token-bucket.ts'
import { handBack } from '../src/limiter/hand-back.ts'
import { Limiter } from '../src/limiter/limiter.ts'
import { Reseed } from '../src/limiter/reseed.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { MemoryPostgres, MemoryRedis, parseValue } from '../src/stores/memory/index.ts'

const policy: Policy = { name: 'default', capacity: 5, refillPerSecond: 1 }
const CALLERS = ['alice', 'bob'] as const
const TOLERANCE = 1e-6
const metrics = new Metrics()
/** How the runs' requests were decided, to show that every path is exercised. */
const outcomes = new Map<string, number>()
let recoveries = 0
const log = createLogger('silent')

const fallback: Config['fallback'] = {
  redisDecides: true,
  redisTimeoutMs: 500,
  mode: 'closed',
  localReplicas: 1,
  localMaxKeys: 1000,
  probeIntervalMs: 1,
  closedRetryAfterSeconds: 1
}

interface Allowed { readonly t: number, readonly cost: number }

interface System {
  /** The true time (and PostgreSQL's clock), epoch ms. */
  now: number
  readonly pg: MemoryPostgres
  readonly redis: MemoryRedis
  readonly gateways: Limiter[]
  readonly allowed: Map<string, Allowed[]>
  /** Descriptions of what happened, for a failure's report. */
  readonly trace: string[]
  /** Callers whose Redis value may be stale since Redis restarted empty, until a re-seed or a write repairs it. */
  readonly restartStale: Set<string>
  readonly reseed: Reseed<Policy>
}

// ---- the reference ----

/** (a): every window [t_i, t_j] of the allowed history. */
function checkWindows (caller: string, history: readonly Allowed[]): void {
  const sorted = [...history].sort((x, y) => x.t - y.t)
  for (let i = 0; i < sorted.length; i++) {
    let spent = 0
    for (let j = i; j < sorted.length; j++) {
      spent += sorted[j]!.cost
      const bound = policy.capacity + (policy.refillPerSecond * (sorted[j]!.t - sorted[i]!.t)) / 1000
      if (spent > bound + TOLERANCE) {
        throw new Error(`safety: ${caller} was allowed ${spent} tokens in [${sorted[i]!.t}, ${sorted[j]!.t}] (bound ${bound})`)
      }
    }
  }
}

/** The bucket replayed from the allowed history, at `nowMs`. */
function referenceTokens (history: readonly Allowed[], nowMs: number): number {
  let tokens = policy.capacity
  let at = -Infinity
  for (const a of [...history].sort((x, y) => x.t - y.t)) {
    tokens = at === -Infinity ? tokens : Math.min(policy.capacity, tokens + ((a.t - at) * policy.refillPerSecond) / 1000)
    tokens -= a.cost
    at = a.t
  }
  return at === -Infinity ? tokens : Math.min(policy.capacity, tokens + ((nowMs - at) * policy.refillPerSecond) / 1000)
}

/** (b): PostgreSQL's rows hold no more than the reference. */
function checkNoRefund (sys: System): void {
  for (const caller of CALLERS) {
    const row = sys.pg.row(policy.name, caller)
    const stored = row === undefined ? policy.capacity : tokensAt(row, policy, sys.now)
    const reference = referenceTokens(sys.allowed.get(caller) ?? [], sys.now)
    if (stored > reference + TOLERANCE) {
      throw new Error(`refund: PostgreSQL holds ${stored} tokens for ${caller} after recovery, the allowed history leaves ${reference}`)
    }
  }
}

// ---- the stores' state, for the preconditions ----

function ownedValues (sys: System): boolean {
  return sys.redis.entries().some(([, v]) => { const kind = parseValue(v)?.kind; return kind === 'r' || kind === 'm' })
}

/** Redis's view of the caller is at least as spent as PostgreSQL's (or Redis owns it). */
function fresh (sys: System, caller: string): boolean {
  const row = sys.pg.row(policy.name, caller)
  if (row === undefined) return true
  const value = parseValue(sys.redis.get(sys.redis.key(policy.name, caller)))
  if (value !== null && value.kind !== '') return true
  const cached = value === null ? policy.capacity : tokensAt({ tokens: value.tokens, atMs: value.at }, policy, sys.now)
  return cached <= tokensAt(row, policy, sys.now) + 1e-9
}

function cacheNotStale (sys: System): boolean {
  return CALLERS.every((caller) => fresh(sys, caller))
}

/** No caller's Redis value is stale from a restart (any other staleness is writes the cache still holds). */
function noRestartStale (sys: System): boolean {
  for (const caller of sys.restartStale) if (fresh(sys, caller)) sys.restartStale.delete(caller)
  return sys.restartStale.size === 0
}

function allBelieveUp (sys: System): boolean {
  return sys.gateways.every((g) => !g.postgresDown)
}

function beliefsMatch (sys: System): boolean {
  return sys.gateways.every((g) => g.postgresDown === sys.pg.down)
}

async function until (condition: () => boolean, what: string, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}

// ---- the commands ----

interface Req { readonly gateway: number, readonly caller: string, readonly cost: number }

async function request (sys: System, r: Req): Promise<string> {
  const gw = sys.gateways[r.gateway % sys.gateways.length]!
  try {
    const d = await gw.check(policy, r.caller, r.cost)
    if (d.allowed) sys.allowed.get(r.caller)!.push({ t: sys.now, cost: r.cost })
    const outcome = `${d.allowed ? 'allowed' : 'refused'} by ${d.source}`
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
    return outcome
  } catch (err) {
    if (err instanceof StoreUnavailableError) {
      outcomes.set('refused: stores unavailable', (outcomes.get('refused: stores unavailable') ?? 0) + 1)
      return 'refused: stores unavailable'
    }
    throw err
  }
}

/** Every gateway's probe finds PostgreSQL and hands back; with Redis up, then (b). */
async function recover (s: System): Promise<void> {
  await until(() => s.gateways.every((g) => !g.postgresDown), 'every gateway to find PostgreSQL again')
  if (s.redis.down) return
  // What is still Redis-owned (a pass that met Redis down, a bucket met after) is handed back
  // by the next pass a gateway runs; run it here instead of waiting for a request to meet it.
  for (let pass = 0; (await s.redis.decider.ownedCount()) > 0 || ownedValues(s); pass++) {
    if (pass === 3) throw new Error('buckets still Redis-owned after 3 hand-back passes with both stores up')
    await handBack(s.pg, s.redis.decider)
  }
  s.trace.push('recovered: checking for refunds')
  recoveries++
  checkNoRefund(s)
}

type Cmd = fc.AsyncCommand<System, System>

const cmd = (name: string, check: (s: System) => boolean, run: (s: System) => Promise<void> | void): Cmd => ({
  check,
  async run (_, s) { s.trace.push(name); await run(s) },
  toString: () => name
})

class Request implements Cmd {
  constructor (readonly r: Req) {}
  check (): boolean { return true }
  async run (_: System, s: System): Promise<void> {
    const outcome = await request(s, this.r)
    s.trace.push(`${this.toString()} -> ${outcome}`)
    checkWindows(this.r.caller, s.allowed.get(this.r.caller)!)
  }

  toString (): string { return `request(gw${this.r.gateway}, ${this.r.caller}, cost ${this.r.cost})` }
}

class Burst implements Cmd {
  constructor (readonly rs: readonly Req[]) {}
  check (s: System): boolean {
    const one = new Set(this.rs.map((r) => r.gateway % s.gateways.length)).size === 1
    return one || beliefsMatch(s)
  }

  async run (_: System, s: System): Promise<void> {
    const outcomes = await Promise.all(this.rs.map(async (r) => await request(s, r)))
    s.trace.push(`${this.toString()} -> ${outcomes.join('; ')}`)
    for (const caller of CALLERS) checkWindows(caller, s.allowed.get(caller)!)
  }

  toString (): string { return `burst[${this.rs.map((r) => `gw${r.gateway} ${r.caller} ${r.cost}`).join(', ')}]` }
}

const req = fc.record({ gateway: fc.nat(2), caller: fc.constantFrom(...CALLERS), cost: fc.integer({ min: 1, max: 2 }) })

// fast-check picks among these uniformly: requests are listed several times to be most of a run.
const commands = [
  ...Array.from({ length: 5 }, () => req.map((r) => new Request(r))),
  ...Array.from({ length: 2 }, () => fc.array(req, { minLength: 2, maxLength: 4 }).map((rs) => new Burst(rs))),
  fc.oneof(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 100, max: 3_000 }), fc.double({ min: 0, max: 1_000, noNaN: true }))
    .map((ms) => cmd(`advance ${ms} ms`, () => true, (s) => { s.now += ms })),
  // With Redis down, the snapshots its outage left stale are written before Redis can decide.
  fc.constant(cmd('postgres down', (s) => !s.pg.down && (cacheNotStale(s) || (s.redis.down && noRestartStale(s))), (s) => { s.pg.down = true })),
  fc.constant(cmd('postgres up', (s) => s.pg.down && (!s.redis.down || !ownedValues(s)), (s) => { s.pg.down = false })),
  fc.constant(cmd('redis down', (s) => !s.redis.down && (s.pg.down || !ownedValues(s)), (s) => { s.redis.down = true })),
  // A Redis back with snapshots a restart left older than PostgreSQL's rows is safe only while
  // no gateway lets it decide: PostgreSQL up and known to be up by all of them.
  fc.constant(cmd('redis up', (s) => s.redis.down && (noRestartStale(s) || (!s.pg.down && allBelieveUp(s))), (s) => { s.redis.down = false })),
  fc.constant(cmd('redis restarted empty', (s) => !s.pg.down && allBelieveUp(s) && !ownedValues(s), (s) => {
    s.redis.lose()
    for (const caller of CALLERS) s.restartStale.add(caller)
  })),
  // What a reconnection starts (reseed.ts); trusted once done: if it wrote too little, a later
  // take-over starts a spent caller full and (a) fails.
  fc.constant(cmd('re-seed', (s) => !s.pg.down && !s.redis.down, async (s) => {
    const outcome = await s.reseed.run()
    s.trace.push(`  -> ${outcome}`)
    if (outcome === 'done' || outcome === 'seeded') s.restartStale.clear()
  })),
  fc.constant(cmd('let recovery run', (s) => !s.pg.down, recover))
]

t.test('model: gateways sharing in-memory stores keep the limit and refund nothing, through outages', async (t) => {
  const started = performance.now()
  let runs = 0
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 3 }),
    fc.integer({ min: -5_000, max: 5_000 }),
    fc.array(fc.integer({ min: -1_000, max: 1_000 }), { minLength: 3, maxLength: 3 }),
    fc.boolean(),
    fc.commands(commands, { maxCommands: 60, size: 'max' }),
    async (n, redisOffset, gatewayOffsets, denyCache, cmds) => {
      runs++
      const sys: System = {
        now: 1_700_000_000_000,
        pg: undefined as unknown as MemoryPostgres,
        redis: undefined as unknown as MemoryRedis,
        gateways: [],
        allowed: new Map(CALLERS.map((c) => [c, []])),
        trace: [],
        restartStale: new Set(),
        reseed: undefined as unknown as Reseed<Policy>
      }
      const pg = new MemoryPostgres({ now: () => sys.now })
      const redis = new MemoryRedis({ now: () => sys.now + redisOffset })
      const reseed = new Reseed(pg, redis.cache, { policies: () => [policy], effective: (p) => p, owner: 'model', metrics, log, retryMs: 3_600_000 })
      Object.assign(sys, { pg, redis, reseed })
      for (let i = 0; i < n; i++) {
        const offset = gatewayOffsets[i]!
        sys.gateways.push(new Limiter({ store: pg, cache: redis.cache, redis: redis.decider }, {
          fallback,
          localDenyCache: { enabled: denyCache, maxEntries: 100 },
          metrics,
          log,
          now: () => sys.now + offset
        }))
      }
      try {
        await fc.asyncModelRun(() => ({ model: sys, real: sys }), cmds)
        // Every run ends with both stores back (Redis first) and a recovery.
        sys.trace.push('end: redis up, postgres up, let recovery run')
        redis.down = false
        pg.down = false
        await recover(sys)
      } catch (err) {
        (err as Error).message += '\n  trace:\n    ' + sys.trace.join('\n    ')
        throw err
      } finally {
        await Promise.all(sys.gateways.map(async (g) => await g.close()))
        reseed.close()
      }
    }
  ), {
    numRuns: Number(process.env.MODEL_RUNS ?? 200),
    // To replay a failure: MODEL_SEED and MODEL_PATH from its report.
    ...(process.env.MODEL_SEED === undefined ? {} : { seed: Number(process.env.MODEL_SEED), path: process.env.MODEL_PATH })
  })
  const seconds = (performance.now() - started) / 1000
  t.pass(`${runs} runs in ${seconds.toFixed(2)} s, ${recoveries} refund checks`)
  t.comment([...outcomes].sort().map(([k, v]) => `${k}: ${v}`).join('\n'))
  for (const path of ['allowed by postgres', 'allowed by redis-fallback', 'refused by redis', 'refused: stores unavailable']) {
    t.ok((outcomes.get(path) ?? 0) > 0, `some request was ${path}`)
  }
})
