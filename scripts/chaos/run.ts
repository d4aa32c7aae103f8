/**
 * `npm run chaos` (issue 13): the fault-and-overshoot suite. Starts private stores (a
 * redis-server on a free port, a throwaway PostgreSQL cluster), a real upstream and three gateway
 * processes sharing them; drives callers far above and below their rate over the three gateways;
 * injects each fault in turn while the load runs; records every request; and checks the figures
 * against the consistency mode's stated bound (scripts/chaos/checker.ts).
 *
 *   --quick               Redis restarted empty, PostgreSQL down, one gateway killed (about a minute)
 *   --mode M              strict, write-behind or all (default): the consistency modes to run,
 *                         each with its own gateways (CONSISTENCY=M) and rows; all skips, with
 *                         the reason, a mode the gateway's configuration does not know, and an
 *                         explicitly requested unknown mode is refused (exit 2)
 *   --sync-interval-ms N  (1000) write-behind's SYNC_INTERVAL_MS, given to the gateways and the bound
 *   --results DIR         where the JSON, Markdown and SVG timelines go (default: a temp dir)
 *   --only a,b            faults by name
 *   --clock-uncertainty-ms N   (2) how far the stores' clocks may disagree with the load generator's
 *   --no-netns            partition through TCP relays even where network namespaces work
 *
 * Partitions are real: the partitioned gateway runs in a network namespace of its own
 * (scripts/lib/netns.ts: a veth pair, every store on an address of its own, a path cut by one
 * `ip route` into a dead end: packets dropped silently). Where namespaces are not available (not
 * root, the kernel refuses) the runner says why and falls back to TCP relays (connections reset,
 * new ones refused), marking those rows.
 *
 * Exit 1 when any figure exceeds its bound (over-admission, or a 5xx / connection error that the
 * fault or the fail mode does not explain).
 */
import { writeFileSync, mkdirSync, mkdtempSync, existsSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { ENVIRONMENT, loadConfigWithSources } from '../../src/config/load.ts'
import { packageRoot } from '../../src/core/package.ts'
import { startProcess, type Proc } from '../lib/child.ts'
import { createPartitionable, removeStale, type Partitionable } from '../lib/netns.ts'
import { sleep } from '../lib/poll.ts'
import { freePort, startPostgresCluster, startRedisServer, type PostgresCluster, type RedisServer } from '../lib/private-stores.ts'
import { startTcpRelay, type TcpRelay } from '../lib/relays.ts'
import { isModeName, MODE_NAMES, modeSupport, statedBound, type BoundSetting, type FaultTraits, type ModeName } from './bounds.ts'
import { checkPhase, type PhaseFigures, type RequestRecord } from './checker.ts'
import { timelineSvg } from './plot.ts'

const now = (): number => performance.now()

export const LIMITS = { capacity: 5, ratePerSecond: 2 }
const GATEWAYS = 3
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
const PROBE_INTERVAL_MS = 500 // fallback.probeIntervalMs's default, which the gateways run with
const DEFAULT_SYNC_INTERVAL_MS = 1000
const STORES = ['postgres', 'redis'] as const
type Store = typeof STORES[number]

/** libfaketime, wherever this machine's multiarch layout put it (Debian's `faketime` package). */
function findFaketime (): string | null {
  const dirs = ['/usr/lib', '/usr/local/lib']
  for (const dir of dirs) {
    let entries: string[] = []
    try { entries = readdirSync(dir) } catch { continue }
    for (const sub of ['', ...entries.filter((e) => e.endsWith('-linux-gnu'))]) {
      const lib = join(dir, sub, 'faketime', 'libfaketime.so.1')
      if (existsSync(lib)) return lib
    }
  }
  return null
}

interface GatewaySlot {
  index: number
  /** Where the load generator reaches it: 127.0.0.1, or its veth address in a namespace. */
  host: string
  port: number
  controlPort: number
  env: Record<string, string>
  /** Runs it inside the partition's namespace. */
  wrap: ((command: string, args: string[]) => [string, string[]]) | null
  child: Proc | null
}

/** How the partitioned gateway's paths to the stores are cut: for real, or by relays. */
export interface Partition {
  via: 'netns' | 'relay'
  /** How it is done; for the relays, why not netns. */
  note: string
  /** The partitioned gateway's URLs of the stores and the upstream, and where it listens. */
  gatewayEnv: Record<string, string>
  host: string
  wrap: GatewaySlot['wrap']
  cut: (store: Store) => Promise<void>
  restore: (store: Store) => Promise<void>
}

export interface Context {
  redis: RedisServer
  postgres: PostgresCluster
  partition: Partition | null
  gateways: GatewaySlot[]
  clockFile: string | null
  faketimeLib: string | null
  startGateway: (slot: GatewaySlot) => Promise<void>
}

export interface Fault extends FaultTraits {
  name: string
  quick?: boolean
  /** Needs the partitioned gateway (set up only when such a fault runs). */
  partition?: boolean
  /** How long the load runs past the healthy phase, besides the recovery phase. */
  nominalMs: number
  /** Injects the fault and removes it; resolves when it is over. Returns a note. */
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
    redisLosesData: true,
    nominalMs: 2000,
    inject: async (ctx) => { await ctx.redis.kill(); await ctx.redis.start(); return 'SIGKILL, restarted with no persistence' }
  },
  {
    name: 'redis-down-5s',
    redisLosesData: true,
    nominalMs: 6000,
    inject: async (ctx) => { await ctx.redis.kill(); await sleep(5000); await ctx.redis.start(); return 'SIGKILL, 5 s, restarted empty' }
  },
  {
    name: 'redis-slow',
    redisSplit: true,
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
      const exited = new Promise((resolve) => slot.child!.proc.once('exit', resolve))
      slot.child!.proc.kill('SIGKILL')
      await exited
      slot.child = null
      await ctx.startGateway(slot)
      return `SIGKILL gateway ${KILL_TARGET}, started again on the same ports`
    },
    explains: (r, w) => r.gateway === KILL_TARGET && r.status === 0 && r.answeredMs >= w.startMs && r.sentMs <= w.endMs
  },
  ...(['+2s', '-2s'] as const).map((offset): Fault => ({
    name: `gateway-clock-${offset === '+2s' ? 'fast' : 'slow'}-2s`,
    nominalMs: 7000,
    unavailable: (ctx) => ctx.clockFile === null ? 'libfaketime.so.1 not found under /usr/lib (apt-get install faketime)' : null,
    inject: async (ctx) => {
      await setClock(ctx, offset)
      await sleep(4000)
      await setClock(ctx, '+0')
      return `libfaketime on gateway ${CLOCK_TARGET}: Date.now ${offset} for ~5 s (monotonic clock not faked)`
    }
  })),
  ...([['postgres', ['postgres']], ['redis', ['redis']], ['both', ['postgres', 'redis']]] as const).map(([name, paths]): Fault => ({
    name: `gateway-partitioned-${name}`,
    partition: true,
    localFailMode: name === 'both',
    redisSplit: name === 'redis',
    nominalMs: 6000,
    inject: async (ctx) => {
      const p = ctx.partition!
      for (const s of paths) await p.cut(s)
      await sleep(5000)
      for (const s of paths) await p.restore(s)
      return p.via === 'netns'
        ? `gateway ${PARTITION_TARGET} (own network namespace) cut from ${paths.join(' and ')} for 5 s: packets dropped silently (ip route into a dead-end veth), route deleted after`
        : `RELAY FALLBACK (${p.note}): gateway ${PARTITION_TARGET}'s relay to ${paths.join(' and ')} cut for 5 s (connections reset, new ones refused)`
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
      inFlight.push(request(`http://${slot.host}:${slot.port}/chaos`, {
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

/** Every gateway reports both stores up (a real partition's TCP retransmissions may take seconds). */
async function settle (ctx: Context): Promise<void> {
  const end = now() + 30_000
  for (const slot of ctx.gateways) {
    while (now() < end) {
      try {
        const res = await request(`http://${slot.host}:${slot.controlPort}/readyz`, { signal: AbortSignal.timeout(2000) })
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
  /** For partitions: netns (real) or relay (fallback). */
  partitionVia?: 'netns' | 'relay'
  faultMs: number
  bound: number
  boundText: string
  figures: PhaseFigures | null
  pass: boolean
  timeline: string | null
}

export interface SkippedMode { mode: string, reason: string }

export interface ChaosOptions {
  quick?: boolean
  only?: string[]
  /** strict, write-behind or all (default all). */
  mode?: ModeName | 'all'
  syncIntervalMs?: number
  resultsDir?: string
  clockUncertaintyMs?: number
  /** Use the TCP relays for partitions even where network namespaces work. */
  noNetns?: boolean
  log?: (line: string) => void
}

/** A mode was asked for by name and the gateway's configuration does not know it. */
export class ModeUnavailableError extends Error {
  override name = 'ModeUnavailableError'
}

/** Which modes run with which environment, and which are skipped and why. */
export function selectModes (mode: ModeName | 'all', syncIntervalMs: number): { run: Array<{ name: ModeName, env: Record<string, string> }>, skipped: SkippedMode[] } {
  const load = (env: Record<string, string>): unknown => loadConfigWithSources({ env }).config
  const wanted = mode === 'all' ? [...MODE_NAMES] : [mode]
  const run: Array<{ name: ModeName, env: Record<string, string> }> = []
  const skipped: SkippedMode[] = []
  for (const name of wanted) {
    const support = modeSupport(name, ENVIRONMENT, load, syncIntervalMs)
    if (support.ok) run.push({ name, env: support.env })
    else if (mode === 'all') skipped.push({ mode: name, reason: support.reason })
    else throw new ModeUnavailableError(`--mode ${name}: ${support.reason}`)
  }
  return { run, skipped }
}

/** Network namespaces for the partitioned gateway, or the relays with the reason. */
async function setUpPartition (noNetns: boolean, log: (l: string) => void): Promise<{ ns: Partitionable | null, why: string }> {
  if (noNetns) return { ns: null, why: '--no-netns' }
  try {
    const removed = await removeStale()
    if (removed.length > 0) log(`removed what a crashed run left: ${removed.join(', ')}`)
    return { ns: await createPartitionable(STORES.length), why: '' }
  } catch (err) {
    const why = `network namespaces unavailable: ${(err as Error).message.split('\n')[0]}`
    log(`${why}; partitions fall back to TCP relays`)
    return { ns: null, why }
  }
}

export async function runChaos (options: ChaosOptions = {}): Promise<{ rows: Row[], ok: boolean, resultsDir: string, skippedModes: SkippedMode[], partitionVia: 'netns' | 'relay' | null }> {
  const log = options.log ?? ((line: string) => process.stdout.write(line + '\n'))
  const syncIntervalMs = options.syncIntervalMs ?? DEFAULT_SYNC_INTERVAL_MS
  const { run: modes, skipped: skippedModes } = selectModes(options.mode ?? 'all', syncIntervalMs)
  for (const s of skippedModes) log(`mode ${s.mode}: not run: ${s.reason}`)
  const resultsDir = options.resultsDir ?? mkdtempSync(join(tmpdir(), 'gw-chaos-'))
  mkdirSync(resultsDir, { recursive: true })
  const u = options.clockUncertaintyMs ?? 2
  const faults = FAULTS.filter((f) => options.only !== undefined ? options.only.includes(f.name) : options.quick === true ? f.quick === true : true)
  const setting: BoundSetting = { ...LIMITS, gateways: GATEWAYS, syncIntervalMs, probeIntervalMs: PROBE_INTERVAL_MS, fenceOff: process.env.FALLBACK_TAKEOVER_FENCE_MS === '0' }
  const cleanups: Array<() => Promise<unknown>> = []
  let cleaned: Promise<void> | null = null
  const cleanUp = async (): Promise<void> => {
    cleaned ??= (async () => { for (const fn of cleanups.reverse()) await fn().catch(() => {}) })()
    await cleaned
  }
  // Interrupted (^C, a CI timeout): the namespace, its links and the stores go all the same.
  const onSignal = (signal: NodeJS.Signals): void => { void cleanUp().finally(() => process.kill(process.pid, signal)) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const rows: Row[] = []
  const agent = new Agent({ connections: 256, keepAliveTimeout: 10_000 })
  let partitionVia: 'netns' | 'relay' | null = null
  try {
    const { ns, why } = faults.some((f) => f.partition === true) ? await setUpPartition(options.noNetns === true, log) : { ns: null, why: '' }
    if (ns !== null) cleanups.push(ns.close)
    const [pgAddress, redisAddress] = ns?.pathAddresses ?? []
    const redis = await startRedisServer({ listen: redisAddress === undefined ? [] : [redisAddress] }); cleanups.push(redis.close)
    const postgres = await startPostgresCluster({ listen: pgAddress === undefined ? [] : [pgAddress], allowFrom: ns === null ? [] : [ns.clientCidr], maxConnections: 100 }); cleanups.push(postgres.close)
    const root = packageRoot()
    const upstreamScript = join(root, 'dist', 'bench', 'upstream.js')
    const startUpstream = async (name: string, wrap: GatewaySlot['wrap']): Promise<Proc> => {
      const [command, args] = wrap?.(process.execPath, [upstreamScript]) ?? [process.execPath, [upstreamScript]]
      const p = await startProcess(name, command, args, { PATH: process.env.PATH ?? '', PORT: '0' }, (l) => l.ready === true)
      cleanups.push(p.stop)
      return p
    }
    const upstream = await startUpstream('upstream', null)
    let partition: Partition | null = null
    if (ns !== null) {
      // The upstream listens on loopback, which is per namespace: the partitioned gateway gets
      // one of its own in there (forwarding is not what is partitioned).
      const nsUpstream = await startUpstream('upstream (namespace)', ns.exec)
      const address = { postgres: pgAddress!, redis: redisAddress! }
      partition = {
        via: 'netns',
        note: `namespace ${ns.namespace}, gateway at ${ns.nsAddress}, PostgreSQL at ${pgAddress}, Redis at ${redisAddress}`,
        gatewayEnv: {
          HOST: ns.nsAddress,
          CONTROL_HOST: ns.nsAddress,
          DATABASE_URL: `postgres://postgres@${pgAddress}:${postgres.port}/postgres`,
          REDIS_URL: `redis://${redisAddress}:${redis.port}`,
          UPSTREAM_URL: `http://127.0.0.1:${String(nsUpstream.ready.port)}`
        },
        host: ns.nsAddress,
        wrap: ns.exec,
        cut: async (s) => { await ns.cut(address[s]) },
        restore: async (s) => { await ns.restore(address[s]) }
      }
    } else if (faults.some((f) => f.partition === true)) {
      const relays: Record<Store, TcpRelay> = { postgres: await startTcpRelay('127.0.0.1', postgres.port), redis: await startTcpRelay('127.0.0.1', redis.port) }
      cleanups.push(relays.postgres.close, relays.redis.close)
      partition = {
        via: 'relay',
        note: why,
        gatewayEnv: {
          DATABASE_URL: `postgres://postgres@127.0.0.1:${relays.postgres.port}/postgres`,
          REDIS_URL: `redis://127.0.0.1:${relays.redis.port}`
        },
        host: '127.0.0.1',
        wrap: null,
        cut: async (s) => { await relays[s].cut() },
        restore: async (s) => { await relays[s].restore() }
      }
    }
    partitionVia = partition?.via ?? null
    if (partition !== null) log(`partitions: ${partition.via}: ${partition.note}`)
    const faketimeLib = findFaketime()
    const clockFile = faketimeLib !== null ? join(resultsDir, 'faketime-offset') : null
    if (clockFile !== null) writeFileSync(clockFile, '+0\n')
    const startGatewayIn = async (slot: GatewaySlot): Promise<void> => {
      const script = join(root, 'dist', 'src', 'main.js')
      const [command, args] = slot.wrap?.(process.execPath, [script]) ?? [process.execPath, [script]]
      slot.child = await startProcess(`gateway ${slot.index}`, command, args, slot.env, (l) => typeof l.msg === 'string' && l.msg.startsWith('Starting server on'))
    }
    for (const mode of modes) {
      const prefix = `chaos-${mode.name}:`
      const gateways: GatewaySlot[] = []
      for (let index = 0; index < GATEWAYS; index++) {
        const partitioned = index === PARTITION_TARGET ? partition : null
        const env: Record<string, string> = {
          PATH: process.env.PATH ?? '',
          HOST: '127.0.0.1',
          PORT: String(await freePort()),
          CONTROL_PORT: String(await freePort()),
          DATABASE_URL: postgres.url,
          REDIS_URL: redis.url,
          REDIS_KEY_PREFIX: prefix,
          UPSTREAM_URL: `http://127.0.0.1:${String(upstream.ready.port)}`,
          RATE_LIMIT_CAPACITY: String(LIMITS.capacity),
          RATE_LIMIT_REFILL_PER_SECOND: String(LIMITS.ratePerSecond),
          DATABASE_DECISION_TIMEOUT_MS: '500',
          READINESS: 'deciding',
          LOG_LEVEL: 'info',
          FAIL_MODE: 'local',
          FAIL_LOCAL_REPLICAS: String(GATEWAYS),
          // The take-over fence is the gateway's default unless the run turns it off (FALLBACK_TAKEOVER_FENCE_MS=0: see bounds.ts).
          ...(process.env.FALLBACK_TAKEOVER_FENCE_MS === undefined ? {} : { FALLBACK_TAKEOVER_FENCE_MS: process.env.FALLBACK_TAKEOVER_FENCE_MS }),
          ...mode.env,
          ...(partitioned?.gatewayEnv ?? {})
        }
        if (index === CLOCK_TARGET && clockFile !== null) {
          Object.assign(env, { LD_PRELOAD: faketimeLib, FAKETIME_TIMESTAMP_FILE: clockFile, FAKETIME_CACHE_DURATION: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' })
        }
        gateways.push({ index, host: partitioned?.host ?? '127.0.0.1', port: Number(env.PORT), controlPort: Number(env.CONTROL_PORT), env, wrap: partitioned?.wrap ?? null, child: null })
      }
      cleanups.push(async () => { await Promise.all(gateways.map(async (g) => await g.child?.stop())) })
      await startGatewayIn(gateways[0]!) // migrations first, then the others
      await Promise.all(gateways.slice(1).map(startGatewayIn))
      const ctx: Context = { redis, postgres, partition, gateways, clockFile, faketimeLib, startGateway: startGatewayIn }
      log(`mode ${mode.name}: ${GATEWAYS} gateways (${Object.entries(mode.env).map(([k, v]) => `${k}=${v}`).join(' ') || 'no CONSISTENCY: strict'}), capacity ${LIMITS.capacity}, refill ${LIMITS.ratePerSecond}/s; ${HOT_CALLERS} callers at ${HOT_RATE}/s, ${COLD_CALLERS} at ${COLD_RATE}/s`)
      for (const fault of faults) {
        const unavailable = fault.unavailable?.(ctx) ?? null
        if (unavailable !== null) {
          const b = statedBound(mode.name, fault, 0, setting)
          rows.push({ mode: mode.name, fault: fault.name, injected: false, note: unavailable, faultMs: 0, bound: b.bound, boundText: b.text, figures: null, pass: true, timeline: null })
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
        const traits = fault.partition === true && partition?.via === 'netns' ? { ...fault, silentPartition: true } : fault
        const { bound, text: boundText } = statedBound(mode.name, traits, faultMs, setting)
        const pass = figures.overAdmission <= bound + 1e-6 && figures.failed === 0
        const file = `${mode.name}-${fault.name}.svg`
        writeFileSync(join(resultsDir, file), await timelineSvg({ title: `${mode.name}: ${fault.name}`, records, originMs: phaseStart, faultStartMs: faultStart, faultEndMs: faultEnd }))
        writeFileSync(join(resultsDir, `${mode.name}-${fault.name}.records.json`), JSON.stringify(records.map((r) => ({ ...r, sentMs: +(r.sentMs - phaseStart).toFixed(2), answeredMs: +(r.answeredMs - phaseStart).toFixed(2) }))))
        const row: Row = { mode: mode.name, fault: fault.name, injected, note, faultMs, bound, boundText, figures, pass, timeline: file }
        if (fault.partition === true && partition !== null) row.partitionVia = partition.via
        rows.push(row)
        log('  ' + summaryLine(row))
      }
      await Promise.all(gateways.map(async (g) => await g.child?.stop()))
    }
  } finally {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
    await agent.close().catch(() => {})
    await cleanUp()
  }
  const ok = rows.every((r) => r.pass)
  writeFileSync(join(resultsDir, 'chaos.json'), JSON.stringify({ limits: LIMITS, clockUncertaintyMs: u, gateways: GATEWAYS, syncIntervalMs, partitionVia, skippedModes, rows }, null, 2))
  const md = markdown(rows, u, skippedModes)
  writeFileSync(join(resultsDir, 'chaos.md'), md)
  log('')
  log(md)
  log(`results: ${resultsDir}`)
  return { rows, ok, resultsDir, skippedModes, partitionVia }
}

function fmt (n: number, digits = 0): string { return Number.isFinite(n) ? n.toFixed(digits) : '-' }

function summaryLine (r: Row): string {
  const f = r.figures!
  return `${r.fault}${r.partitionVia === 'relay' ? ' (relay fallback)' : ''}: ${f.requests} requests, ${f.allowed} allowed; over-admission ${fmt(Math.max(0, f.overAdmission), 2)} (bound ${fmt(r.bound, 2)}), wrong refusals ${f.wrongRefusals}, failed ${f.failed} (+${f.explainedFailures} explained), p99 ${fmt(f.p99HealthyMs)} -> ${fmt(f.p99FaultMs)} ms ${r.pass ? 'ok' : 'EXCEEDS BOUND'}`
}

export function markdown (rows: Row[], u: number, skippedModes: SkippedMode[] = []): string {
  const lines = [
    `Capacity ${LIMITS.capacity}, refill ${LIMITS.ratePerSecond}/s, ${GATEWAYS} gateways; clock uncertainty ${u} ms. Over-admission: the largest certain excess of any caller over capacity + rate × T in any window (0 when within).`,
    '',
    '| mode | fault | fault s | requests | allowed | refused | over-admission | bound | wrong refusals | failed (explained) | p99 healthy / fault ms | sources | verdict |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'
  ]
  for (const r of rows) {
    const f = r.figures
    const fault = r.partitionVia === undefined ? r.fault : `${r.fault} (${r.partitionVia === 'netns' ? 'netns' : 'relay fallback'})`
    if (f === null) { lines.push(`| ${r.mode} | ${fault} | - | - | - | - | - | ${r.boundText} | - | - | - | - | not injected: ${r.note} |`); continue }
    const sources = Object.entries(f.sources).sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ')
    lines.push(`| ${r.mode} | ${fault} | ${fmt(r.faultMs / 1000, 1)} | ${f.requests} | ${f.allowed} | ${f.refused} | ${fmt(Math.max(0, f.overAdmission), 2)} | ${r.boundText} = ${fmt(r.bound, 2)} | ${f.wrongRefusals} | ${f.failed} (${f.explainedFailures}) | ${fmt(f.p99HealthyMs)} / ${fmt(f.p99FaultMs)} | ${sources} | ${r.pass ? 'ok' : '**exceeds**'}${r.injected ? '' : ' (' + r.note + ')'} |`)
  }
  for (const s of skippedModes) lines.push('', `- mode ${s.mode} not run: ${s.reason}.`)
  const over = rows.filter((r) => r.figures !== null && r.figures.overAdmission > 1e-6)
  for (const r of over) lines.push('', `- ${r.mode} ${r.fault}: caller ${r.figures!.overAdmittedCaller} over-admitted by ${fmt(r.figures!.overAdmission, 2)} in the window ${r.figures!.overAdmissionWindow!.map((x) => fmt(x)).join('–')} ms (run clock)${r.figures!.overAdmission > r.bound + 1e-6 ? ': beyond the bound' : ''}.`)
  return lines.join('\n') + '\n'
}

export function parseArgs (argv: string[]): ChaosOptions {
  const options: ChaosOptions = {}
  const value = (i: number, flag: string): string => {
    const v = argv[i]
    if (v === undefined) throw new Error(`${flag} needs a value`)
    return v
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--quick') options.quick = true
    else if (a === '--results') options.resultsDir = value(++i, a)
    else if (a === '--only') options.only = value(++i, a).split(',')
    else if (a === '--clock-uncertainty-ms') options.clockUncertaintyMs = Number(value(++i, a))
    else if (a === '--sync-interval-ms') {
      const n = Number(value(++i, a))
      if (!Number.isInteger(n) || n <= 0) throw new Error('--sync-interval-ms: a positive integer')
      options.syncIntervalMs = n
    } else if (a === '--mode') {
      const m = value(++i, a)
      if (m !== 'all' && !isModeName(m)) throw new Error(`--mode ${m}: one of ${MODE_NAMES.join(', ')}, all`)
      options.mode = m
    } else if (a === '--no-netns') options.noNetns = true
    else throw new Error(`unknown argument ${a}`)
  }
  return options
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let options: ChaosOptions
  try {
    options = parseArgs(process.argv.slice(2))
  } catch (err) {
    console.error((err as Error).message)
    process.exit(2)
  }
  runChaos(options).then(({ ok }) => { process.exitCode = ok ? 0 : 1 }, (err: unknown) => {
    console.error(err instanceof ModeUnavailableError ? err.message : err)
    process.exitCode = 2
  })
}
