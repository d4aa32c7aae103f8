/**
 * One vs several worker processes (proxy.workers, WORKERS), the same gateway otherwise:
 * `npm run build && node dist/bench/workers.js` (BENCH_WORKERS=1,2 by default). A short manual
 * measurement, not part of `npm run bench`: three loads per worker count, each on a fresh
 * gateway with its own database and Redis prefix, CPU per request summed over the primary and
 * every worker. Figures and their caveats: docs/performance.md, "Workers: 1 vs 2".
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { saturate, loadGenerator, type Workload } from './load.ts'
import { cpuSeconds, machineSeconds, startChild, type Child } from './procs.ts'

const here = dirname(fileURLToPath(import.meta.url))
const env = process.env
const ADMIN_URL = env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const COUNTS = (env.BENCH_WORKERS ?? '1,2').split(',').map(Number)
const CONNECTIONS = Number(env.BENCH_CONNECTIONS ?? 64)
const SECONDS = Number(env.BENCH_DURATION ?? 8)
// Long: each worker of N gets 1/N of the warm-up requests, and V8 optimises by calls seen.
const WARMUP = Number(env.BENCH_WARMUP ?? 10)
/** A subset of the loads below, by number (1, 2, 3). */
const ONLY = env.BENCH_LOADS === undefined ? null : new Set(env.BENCH_LOADS.split(',').map(Number))
const GATEWAY_MAIN = join(here, '..', 'src', 'main.js')

const LOADS: Array<{ name: string, w: Workload }> = [
  { name: 'allow-listed (no bucket)', w: { kind: 'proxy', prefix: 'vip', callers: 1 } },
  { name: 'all allowed, 50000 callers (PostgreSQL decides)', w: { kind: 'proxy', prefix: 'c', callers: 50_000 } },
  { name: 'one caller flooding (refused via Redis)', w: { kind: 'proxy', prefix: 'flood', callers: 1 } }
]

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-bench-workers-'))
  const configFile = join(dir, 'gateway.yaml')
  writeFileSync(configFile, 'access:\n  allow: [vip0]\n')
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} })
  const upstream = await startChild('upstream', join(here, 'upstream.js'), { PATH: env.PATH }, (l) => l.ready === true)
  const upstreamUrl = `http://127.0.0.1:${upstream.ready.port as number}`
  console.log(`workers benchmark (${new Date().toISOString()}): ${CONNECTIONS} connections, ${SECONDS} s per load after ${WARMUP} s warm-up, load generator ${loadGenerator}`)
  console.log('workers | load                                              |   req/s | p50 ms | p99 ms | non-2xx | gateway CPU µs/req | machine busy | decisions per PostgreSQL round trip')
  try {
    for (const count of COUNTS) {
      for (const [i, { name, w }] of LOADS.entries()) {
        if (ONLY !== null && !ONLY.has(i + 1)) continue
        const db = `bench_workers_${process.pid}_${count}_${w.prefix}`
        await admin.unsafe(`CREATE DATABASE ${db}`)
        let gw: Child | undefined
        try {
          gw = await startChild(`gateway-${count}`, GATEWAY_MAIN, {
            PATH: env.PATH, WORKERS: String(count), PORT: '0', CONTROL_PORT: '0', HOST: '127.0.0.1',
            UPSTREAM_URL: upstreamUrl, DATABASE_URL: ADMIN_URL.replace(/\/[^/]*$/, `/${db}`), REDIS_URL,
            REDIS_KEY_PREFIX: `bw${process.pid}${count}${w.prefix}:`, CONFIG_FILE: configFile,
            RATE_LIMIT_CAPACITY: '10', RATE_LIMIT_REFILL_PER_SECOND: '1'
          }, (l) => typeof l.msg === 'string' && l.msg.startsWith('Starting server on'), ['--max-semi-space-size=8', '--heap-growing-percent=50'])
          const url = `http://127.0.0.1:${gw.ready.port as number}`
          const pids = [gw.proc.pid!, ...((gw.ready.pids as number[] | undefined) ?? [])]
          await saturate(url, w, CONNECTIONS, WARMUP)
          const cpu0 = pids.reduce((n, p) => n + cpuSeconds(p), 0)
          const m0 = machineSeconds()
          const r = await saturate(url, w, CONNECTIONS, SECONDS)
          const cpu = pids.reduce((n, p) => n + cpuSeconds(p), 0) - cpu0
          const m1 = machineSeconds()
          const busy = (m1.busy - m0.busy) / (m1.total - m0.total)
          // Group commit per process: with N workers each batches only its own requests.
          const text = await (await fetch(`http://127.0.0.1:${gw.ready.control_port as number}/metrics`)).text()
          const metric = (name: string): number => Number(/^(\S+) (\S+)$/m.exec(text.split('\n').filter((l) => l.startsWith(name + ' ')).join('\n'))?.[2] ?? NaN)
          const batch = metric('gateway_postgres_batch_size_sum') / metric('gateway_postgres_batch_size_count')
          console.log(`${String(count).padStart(7)} | ${name.padEnd(49)} | ${r.rps.toFixed(0).padStart(7)} | ${r.p50Ms.toFixed(2).padStart(6)} | ${r.p99Ms.toFixed(2).padStart(6)} | ${String(r.non2xx).padStart(7)} | ${(cpu / r.requests * 1e6).toFixed(0).padStart(18)} | ${(busy * 100).toFixed(0).padStart(11)}% | ${Number.isFinite(batch) ? batch.toFixed(1) : '-'}`)
        } finally {
          await gw?.stop()
          await admin.unsafe(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
        }
      }
    }
  } finally {
    await upstream.stop()
    await admin.end()
  }
}

await main()
