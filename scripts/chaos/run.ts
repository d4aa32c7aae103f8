/**
 * `npm run chaos` (issue 13): the fault-and-overshoot suite. Starts private stores (a
 * redis-server on a free port, a throwaway PostgreSQL cluster), a real upstream and three gateway
 * processes sharing them; drives callers far above and below their rate over the three gateways;
 * injects each fault in turn while the load runs; records every request; and checks the figures
 * against the consistency mode's stated bound (scripts/chaos/checker.ts).
 *
 *   --quick               Redis restarted empty, PostgreSQL down, one gateway killed (about a minute)
 *   --results DIR         where the JSON, Markdown and SVG timelines go (default: a temp dir)
 *   --only a,b            faults by name
 *   --clock-uncertainty-ms N   (2) how far the stores' clocks may disagree with the load generator's
 *
 * Exit 1 when any figure exceeds its bound (over-admission, or a 5xx / connection error that the
 * fault or the fail mode does not explain).
 */
import { writeFileSync, mkdirSync, mkdtempSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { startChild, type Child } from '../../bench/procs.ts'
import { packageRoot } from '../../src/core/package.ts'
import { checkPhase, type PhaseFigures, type RequestRecord } from './checker.ts'
import { timelineSvg } from './plot.ts'
import { freePort, startPostgres, startRedis, startRelay, type ChaosPostgres, type ChaosRedis, type Relay } from './stores.ts'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const now = (): number => performance.now()

export const LIMITS = { capacity: 5, ratePerSecond: 2 }
const GATEWAYS = 3
/** Over-admission a switch of who decides can cause: one request (cost 1) per other gateway. */
const SWITCH = GATEWAYS - 1
const KILL_TARGET = 0
const CLOCK_TARGET = 1
const PARTITION_TARGET = 2
const HEALTHY_MS = 3000
const RECOVERY_MS = 4000
const HOT_CALLERS = 6
const HOT_RATE = 20 // requests per second: 10× the refill
const COLD_CALLERS = 6
const COLD_RATE = 1 // half the refill
const CLIENT_TIMEOUT_MS = 10_000
const FAKETIME_LIB = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1'

/** A consistency mode: its gateway settings and its stated over-admission bound per fault. */
export interface Mode {
  name: string
  env: Record<string, string>
  /** Stated bound on over-admission (cost units) for a fault lasting `faultMs`. */
  bound: (fault: Fault, faultMs: number) => number
  boundText: (fault: Fault) => string
}

export const MODES: Mode[] = [
  {
    name: 'strict',
    env: { FAIL_MODE: 'local', FAIL_LOCAL_REPLICAS: String(GATEWAYS) },
    // PostgreSQL decides (Redis atomically while it is away). 0 while every gateway agrees on who
    // decides; across a switch, while some gateways still decide in PostgreSQL and others in
    // Redis (docs/design.md, "Where the bound is weaker": a PostgreSQL allowance in flight to
    // Redis, or a decision past its deadline on a starved host), a caller can get one request
    // more per other gateway (SWITCH). A fault that puts one gateway in the local fail mode
    // (both stores unreachable from it) adds that gateway's in-process share: capacity/N,
    // refilled at rate/N, unshared, while cut off (plus one probe interval, 0.5 s).
    bound: (fault, faultMs) => SWITCH + (fault.localFailMode === true ? LIMITS.capacity / GATEWAYS + (LIMITS.ratePerSecond / GATEWAYS) * (faultMs + 500) / 1000 : 0),
    boundText: (fault) => fault.localFailMode === true ? `${SWITCH} + C/${GATEWAYS} + r/${GATEWAYS}·(T+0.5 s)` : `${SWITCH} (switch)`
  }
]

interface GatewaySlot {
  index: number
  port: number
  controlPort: number
  env: Record<string, string>
  child: Child | null
}

export interface Context {
  redis: ChaosRedis
  postgres: ChaosPostgres
  relays: { postgres: Relay, redis: Relay }
  gateways: GatewaySlot[]
  clockFile: string | null
  startGateway: (slot: GatewaySlot) => Promise<void>
}

export interface Fault {
  name: string
  quick?: boolean
  /** Both stores unreachable from one gateway: the local fail mode's bound applies. */
  localFailMode?: boolean
  /** How long the load runs past the healthy phase, besides the recovery phase. */
  nominalMs: number
  /** Injects the fault and removes it; resolves when it is over. Returns a note, or throws 'cannot'. */
  inject: (ctx: Context) => Promise<string | undefined>
  /** Failures this fault explains (none by default). */
  explains?: (r: RequestRecord, window: { startMs: number, endMs: number }) => boolean
  /** Why it cannot run here, or null. */
  unavailable?: (ctx: Context) => string | null
}

async function setClock (ctx: Context, offset: string): Promise<void> {
  writeFileSync(ctx.clockFile!, offset + '\n')
  await sleep(1100) // libfaketime re-reads the file once a second (FAKETIME_CACHE_DURATION=1)
}

export const FAULTS: Fault[] = [
  {
    name: 'redis-restarted-empty',
    quick: true,
    nominalMs: 2000,
    inject: async (ctx) => { await ctx.redis.kill(); await ctx.redis.start(); return 'SIGKILL, restarted with no persistence' }
  },
  {
    name: 'redis-down-5s',
    nominalMs: 6000,
    inject: async (ctx) => { await ctx.redis.kill(); await sleep(5000); await ctx.redis.start(); return 'SIGKILL, 5 s, restarted empty' }
  },
  {
    name: 'redis-slow',
    nominalMs: 4000,
    inject: async (ctx) => { await ctx.redis.pause(3000); await sleep(3000); return 'CLIENT PAUSE 3000 ALL (Redis timeout 50 ms, fallback 500 ms)' }
  },
  {
    name: 'postgres-down-5s',
    quick: true,
    nominalMs: 6000,
    inject: async (ctx) => { await ctx.postgres.stopImmediate(); await sleep(5000); await ctx.postgres.start(); return 'pg_ctl stop -m immediate, 5 s, pg_ctl start' }
  },
  {
    name: 'postgres-stalled',
    nominalMs: 4000,
    inject: async (ctx) => {
      const pids = await ctx.postgres.stall()
      await sleep(3000)
      ctx.postgres.resume(pids)
      return `SIGSTOP postmaster + ${pids.length - 1} backends for 3 s (DATABASE_DECISION_TIMEOUT_MS 500), SIGCONT`
    }
  },
  {
    name: 'gateway-killed',
    quick: true,
    nominalMs: 4000,
    inject: async (ctx) => {
      const slot = ctx.gateways[KILL_TARGET]!
      slot.child!.proc.kill('SIGKILL')
      await new Promise((resolve) => slot.child!.proc.once('exit', resolve))
      slot.child = null
      await ctx.startGateway(slot)
      return `SIGKILL gateway ${KILL_TARGET}, started again on the same ports`
    },
    explains: (r, w) => r.gateway === KILL_TARGET && r.status === 0 && r.answeredMs >= w.startMs && r.sentMs <= w.endMs
  },
  ...(['+2s', '-2s'] as const).map((offset): Fault => ({
    name: `gateway-clock-${offset === '+2s' ? 'fast' : 'slow'}-2s`,
    nominalMs: 7000,
    unavailable: (ctx) => ctx.clockFile === null ? `${FAKETIME_LIB} not found (apt-get install faketime)` : null,
    inject: async (ctx) => {
      await setClock(ctx, offset)
      await sleep(4000)
      await setClock(ctx, '+0')
      return `libfaketime on gateway ${CLOCK_TARGET}: Date.now ${offset} for ~5 s (monotonic clock not faked)`
    }
  })),
  ...([['postgres', ['postgres']], ['redis', ['redis']], ['both', ['postgres', 'redis']]] as const).map(([name, paths]): Fault => ({
    name: `gateway-partitioned-${name}`,
    localFailMode: name === 'both',
    nominalMs: 6000,
    inject: async (ctx) => {
      for (const p of paths) await ctx.relays[p].cut()
      await sleep(5000)
      for (const p of paths) await ctx.relays[p].restore()
      return `gateway ${PARTITION_TARGET}'s relay to ${paths.join(' and ')} cut for 5 s (connections reset, new ones refused)`
    }
  }))
]

interface Caller { id: string, ratePerSecond: number, offset: number }

/** Every caller's bounded open loop: a fixed number of requests at a fixed pace, then it stops. */
async function drive (ctx: Context, agent: Agent, callers: Caller[], durationMs: number, records: RequestRecord[]): Promise<void> {
  const origin = now()
  await Promise.all(callers.map(async (caller) => {
    const everyMs = 1000 / caller.ratePerSecond
    const count = Math.floor(durationMs / everyMs)
    const inFlight: Array<Promise<void>> = []
    for (let i = 0; i < count; i++) {
      const due = origin + caller.offset + i * everyMs
      const wait = due - now()
      if (wait > 0) await sleep(wait)
      const gateway = (i + caller.offset) % GATEWAYS
      const slot = ctx.gateways[gateway]!
      const sentMs = now()
      inFlight.push(request(`http://127.0.0.1:${slot.port}/chaos`, {
        dispatcher: agent, headers: { 'x-user-id': caller.id }, signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS)
      }).then(async (res) => {
        await res.body.dump()
        const source = res.headers['x-data-source']
        records.push({ caller: caller.id, gateway, sentMs, answeredMs: now(), status: res.statusCode, source: typeof source === 'string' ? source : '', cost: 1 })
      }, (err: unknown) => {
        const e = err as { code?: string, name?: string }
        records.push({ caller: caller.id, gateway, sentMs, answeredMs: now(), status: 0, source: '', cost: 1, error: e.code ?? e.name ?? 'error' })
      }))
    }
    await Promise.all(inFlight)
  }))
}

async function settle (ctx: Context): Promise<void> {
  const end = now() + 20_000
  for (const slot of ctx.gateways) {
    while (now() < end) {
      try {
        const res = await request(`http://127.0.0.1:${slot.controlPort}/readyz`, { signal: AbortSignal.timeout(2000) })
        const body = await res.body.json() as { postgres?: string, redis?: string }
        if (body.postgres === 'up' && body.redis === 'up') break
      } catch { /* not yet */ }
      await sleep(200)
    }
  }
  await sleep(1500) // a few probe intervals: hand-backs finish
}

export interface Row {
  mode: string
  fault: string
  injected: boolean
  note: string
  faultMs: number
  bound: number
  boundText: string
  figures: PhaseFigures | null
  pass: boolean
  timeline: string | null
}

export interface ChaosOptions {
  quick?: boolean
  only?: string[]
  resultsDir?: string
  clockUncertaintyMs?: number
  log?: (line: string) => void
}

export async function runChaos (options: ChaosOptions = {}): Promise<{ rows: Row[], ok: boolean, resultsDir: string }> {
  const log = options.log ?? ((line: string) => process.stdout.write(line + '\n'))
  const resultsDir = options.resultsDir ?? mkdtempSync(join(tmpdir(), 'gw-chaos-'))
  mkdirSync(resultsDir, { recursive: true })
  const u = options.clockUncertaintyMs ?? 2
  const faults = FAULTS.filter((f) => options.only !== undefined ? options.only.includes(f.name) : options.quick === true ? f.quick === true : true)
  const cleanups: Array<() => Promise<unknown>> = []
  const rows: Row[] = []
  const agent = new Agent({ connections: 256, keepAliveTimeout: 10_000 })
  try {
    const redis = await startRedis(); cleanups.push(redis.close)
    const postgres = await startPostgres(); cleanups.push(postgres.close)
    const relays = { postgres: await startRelay(postgres.port), redis: await startRelay(redis.port) }
    cleanups.push(relays.postgres.close, relays.redis.close)
    const root = packageRoot()
    const upstream = await startChild('upstream', join(root, 'dist', 'bench', 'upstream.js'), { PATH: process.env.PATH ?? '', PORT: '0' }, (l) => l.ready === true)
    cleanups.push(upstream.stop)
    const clockFile = existsSync(FAKETIME_LIB) ? join(resultsDir, 'faketime-offset') : null
    if (clockFile !== null) writeFileSync(clockFile, '+0\n')
    const startGatewayIn = async (slot: GatewaySlot): Promise<void> => {
      slot.child = await startChild(`gateway ${slot.index}`, join(root, 'dist', 'src', 'main.js'), slot.env, (l) => typeof l.msg === 'string' && l.msg.startsWith('Starting server on'))
    }
    for (const mode of MODES) {
      const prefix = `chaos-${mode.name}:`
      const gateways: GatewaySlot[] = []
      for (let index = 0; index < GATEWAYS; index++) {
        const viaRelay = index === PARTITION_TARGET
        const env: Record<string, string> = {
          PATH: process.env.PATH ?? '',
          HOST: '127.0.0.1',
          PORT: String(await freePort()),
          CONTROL_PORT: String(await freePort()),
          DATABASE_URL: `postgres://postgres@127.0.0.1:${viaRelay ? relays.postgres.port : postgres.port}/postgres`,
          REDIS_URL: `redis://127.0.0.1:${viaRelay ? relays.redis.port : redis.port}`,
          REDIS_KEY_PREFIX: prefix,
          UPSTREAM_URL: `http://127.0.0.1:${String(upstream.ready.port)}`,
          RATE_LIMIT_CAPACITY: String(LIMITS.capacity),
          RATE_LIMIT_REFILL_PER_SECOND: String(LIMITS.ratePerSecond),
          DATABASE_DECISION_TIMEOUT_MS: '500',
          READINESS: 'deciding',
          LOG_LEVEL: 'info',
          ...mode.env
        }
        if (index === CLOCK_TARGET && clockFile !== null) {
          Object.assign(env, { LD_PRELOAD: FAKETIME_LIB, FAKETIME_TIMESTAMP_FILE: clockFile, FAKETIME_CACHE_DURATION: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' })
        }
        gateways.push({ index, port: Number(env.PORT), controlPort: Number(env.CONTROL_PORT), env, child: null })
      }
      await startGatewayIn(gateways[0]!) // migrations first, then the others
      await Promise.all(gateways.slice(1).map(startGatewayIn))
      cleanups.push(async () => { await Promise.all(gateways.map(async (g) => await g.child?.stop())) })
      const ctx: Context = { redis, postgres, relays, gateways, clockFile, startGateway: startGatewayIn }
      log(`mode ${mode.name}: ${GATEWAYS} gateways, capacity ${LIMITS.capacity}, refill ${LIMITS.ratePerSecond}/s; ${HOT_CALLERS} callers at ${HOT_RATE}/s, ${COLD_CALLERS} at ${COLD_RATE}/s`)
      for (const fault of faults) {
        const unavailable = fault.unavailable?.(ctx) ?? null
        if (unavailable !== null) {
          rows.push({ mode: mode.name, fault: fault.name, injected: false, note: unavailable, faultMs: 0, bound: 0, boundText: mode.boundText(fault), figures: null, pass: true, timeline: null })
          log(`  ${fault.name}: not injected: ${unavailable}`)
          continue
        }
        await settle(ctx)
        const callers: Caller[] = [
          ...Array.from({ length: HOT_CALLERS }, (_, i) => ({ id: `${mode.name}-${fault.name}-hot-${i}`, ratePerSecond: HOT_RATE, offset: i })),
          ...Array.from({ length: COLD_CALLERS }, (_, i) => ({ id: `${mode.name}-${fault.name}-cold-${i}`, ratePerSecond: COLD_RATE, offset: i * 7 }))
        ]
        const records: RequestRecord[] = []
        const phaseStart = now()
        const loadMs = HEALTHY_MS + fault.nominalMs + RECOVERY_MS
        const load = drive(ctx, agent, callers, loadMs, records)
        await sleep(HEALTHY_MS)
        const faultStart = now()
        let note = ''
        let injected = true
        try {
          note = await fault.inject(ctx) ?? ''
        } catch (err) {
          injected = false
          note = `could not inject: ${(err as Error).message.split('\n')[0]}`
        }
        const faultEnd = now()
        await load
        const window = { startMs: faultStart, endMs: faultEnd }
        const figures = checkPhase(records, { ...LIMITS, clockUncertaintyMs: u, allowedStatuses: [200] },
          { startMs: phaseStart, endMs: faultStart }, { startMs: faultStart, endMs: faultEnd + 1000 },
          (r) => fault.explains?.(r, window) ?? false)
        const faultMs = faultEnd - faultStart
        const bound = mode.bound(fault, faultMs)
        const pass = figures.overAdmission <= bound + 1e-6 && figures.failed === 0
        const file = `${mode.name}-${fault.name}.svg`
        writeFileSync(join(resultsDir, file), await timelineSvg({ title: `${mode.name}: ${fault.name}`, records, originMs: phaseStart, faultStartMs: faultStart, faultEndMs: faultEnd }))
        writeFileSync(join(resultsDir, `${mode.name}-${fault.name}.records.json`), JSON.stringify(records.map((r) => ({ ...r, sentMs: +(r.sentMs - phaseStart).toFixed(2), answeredMs: +(r.answeredMs - phaseStart).toFixed(2) }))))
        const row: Row = { mode: mode.name, fault: fault.name, injected, note, faultMs, bound, boundText: mode.boundText(fault), figures, pass, timeline: file }
        rows.push(row)
        log('  ' + summaryLine(row))
      }
      await Promise.all(gateways.map(async (g) => await g.child?.stop()))
    }
  } finally {
    await agent.close().catch(() => {})
    for (const fn of cleanups.reverse()) await fn().catch(() => {})
  }
  const ok = rows.every((r) => r.pass)
  writeFileSync(join(resultsDir, 'chaos.json'), JSON.stringify({ limits: LIMITS, clockUncertaintyMs: u, gateways: GATEWAYS, rows }, null, 2))
  writeFileSync(join(resultsDir, 'chaos.md'), markdown(rows, u))
  log('')
  log(markdown(rows, u))
  log(`results: ${resultsDir}`)
  return { rows, ok, resultsDir }
}

function fmt (n: number, digits = 0): string { return Number.isFinite(n) ? n.toFixed(digits) : '-' }

function summaryLine (r: Row): string {
  const f = r.figures!
  return `${r.fault}: ${f.requests} requests, ${f.allowed} allowed; over-admission ${fmt(Math.max(0, f.overAdmission), 2)} (bound ${fmt(r.bound, 2)}), wrong refusals ${f.wrongRefusals}, failed ${f.failed} (+${f.explainedFailures} explained), p99 ${fmt(f.p99HealthyMs)} -> ${fmt(f.p99FaultMs)} ms ${r.pass ? 'ok' : 'EXCEEDS BOUND'}`
}

export function markdown (rows: Row[], u: number): string {
  const lines = [
    `Capacity ${LIMITS.capacity}, refill ${LIMITS.ratePerSecond}/s, ${GATEWAYS} gateways; clock uncertainty ${u} ms. Over-admission: the largest certain excess of any caller over capacity + rate × T in any window (0 when within).`,
    '',
    '| mode | fault | fault s | requests | allowed | refused | over-admission | bound | wrong refusals | failed (explained) | p99 healthy / fault ms | sources | verdict |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'
  ]
  for (const r of rows) {
    const f = r.figures
    if (f === null) { lines.push(`| ${r.mode} | ${r.fault} | - | - | - | - | - | ${r.boundText} | - | - | - | - | not injected: ${r.note} |`); continue }
    const sources = Object.entries(f.sources).sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ')
    lines.push(`| ${r.mode} | ${r.fault} | ${fmt(r.faultMs / 1000, 1)} | ${f.requests} | ${f.allowed} | ${f.refused} | ${fmt(Math.max(0, f.overAdmission), 2)} | ${r.boundText} = ${fmt(r.bound, 2)} | ${f.wrongRefusals} | ${f.failed} (${f.explainedFailures}) | ${fmt(f.p99HealthyMs)} / ${fmt(f.p99FaultMs)} | ${sources} | ${r.pass ? 'ok' : '**exceeds**'}${r.injected ? '' : ' (' + r.note + ')'} |`)
  }
  const worst = rows.filter((r) => r.figures !== null && r.figures.overAdmission > r.bound + 1e-6)
  for (const r of worst) lines.push('', `- ${r.fault}: caller ${r.figures!.overAdmittedCaller} over-admitted by ${fmt(r.figures!.overAdmission, 2)} in the window ${r.figures!.overAdmissionWindow!.map((x) => fmt(x)).join('–')} ms (run clock).`)
  return lines.join('\n') + '\n'
}

function parseArgs (argv: string[]): ChaosOptions {
  const options: ChaosOptions = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--quick') options.quick = true
    else if (a === '--results') options.resultsDir = argv[++i]
    else if (a === '--only') options.only = (argv[++i] ?? '').split(',')
    else if (a === '--clock-uncertainty-ms') options.clockUncertaintyMs = Number(argv[++i])
    else throw new Error(`unknown argument ${a}`)
  }
  return options
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  runChaos(parseArgs(process.argv.slice(2))).then(({ ok }) => { process.exitCode = ok ? 0 : 1 }, (err: unknown) => {
    console.error(err)
    process.exitCode = 2
  })
}
