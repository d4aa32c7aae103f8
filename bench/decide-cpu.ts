/**
 * PostgreSQL CPU per decision of the batch decision: 006's plpgsql loop
 * (rate_limit_decide_groups) against 007's set-based statements (rate_limit_decide_batch) and
 * 009's one UPDATE per allowance (rate_limit_decide_distinct: every key once, one bucket per
 * request, as these batches are), the same batches on the same rows, measured from the backends'
 * CPU in /proc/<pid>/stat around N decisions (docs/performance.md, "One set-based statement per
 * batch", "One UPDATE per allowance"). The functions take turns, so a machine shared with other
 * work loads them alike; every turn is one sample.
 *
 *   npm run build && node dist/bench/decide-cpu.js
 *
 * DECIDE_BATCH (sizes, default 64,256), DECIDE_CONNECTIONS (batches in flight, default 4),
 * DECIDE_DECISIONS (per sample, default 40000), DECIDE_ROUNDS (samples per function, default 5),
 * DECIDE_MIX (distinct | mixed: a tenth of the items on a repeated key, a twentieth new; 009
 * takes distinct keys only, so it is left out of a mixed run), DECIDE_FNS (a subset, by
 * migration number: e.g. 006,009 for the batch sizes that go to 009).
 */
import postgres from 'postgres'
import { randomBytes } from 'node:crypto'
import { migrate } from '../src/stores/postgres/migrate.ts'
import { cpuSeconds } from './procs.ts'
import { median } from './turns.ts'

const ADMIN = process.env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const sizes = (process.env.DECIDE_BATCH ?? '64,256').split(',').map(Number)
const connections = Number(process.env.DECIDE_CONNECTIONS ?? 4)
const perSample = Number(process.env.DECIDE_DECISIONS ?? 40_000)
const rounds = Number(process.env.DECIDE_ROUNDS ?? 5)
const mix = process.env.DECIDE_MIX ?? 'distinct'
const KEYS = 50_000
const ALL = { '006': 'rate_limit_decide_groups', '007': 'rate_limit_decide_batch', '009': 'rate_limit_decide_distinct' } as const
const FNS = (process.env.DECIDE_FNS ?? (mix === 'distinct' ? '006,007,009' : '006,007')).split(',').map((v) => {
  const fn = ALL[v as keyof typeof ALL]
  if (fn === undefined) throw new Error(`DECIDE_FNS: ${v} is none of ${Object.keys(ALL).join(', ')}`)
  return fn
})

async function main (): Promise<void> {
  const name = `bench_decide_${process.pid}_${randomBytes(3).toString('hex')}`
  const admin = postgres(ADMIN, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const url = new URL(ADMIN)
  url.pathname = '/' + name
  const app = `decide-cpu-${process.pid}`
  const sql = postgres(url.toString(), { max: connections, onnotice: () => {}, connection: { application_name: app } })
  try {
    await migrate(sql)
    // Every key exists and is far from empty: each decision is an allowance and a write (case 3).
    await sql`INSERT INTO rate_limits (policy, user_id, tokens, last_refill_time)
      SELECT 'bench', 'u' || g, 1e9, clock_timestamp() FROM generate_series(0, ${KEYS - 1}) AS g`
    await sql`VACUUM ANALYZE rate_limits`
    // Open every connection, then find their backends.
    await Promise.all(Array.from({ length: connections }, async () => await sql`SELECT pg_sleep(0.05)`))
    const pids = (await admin<Array<{ pid: number }>>`SELECT pid FROM pg_stat_activity WHERE application_name = ${app}`).map((r) => r.pid)
    if (pids.length !== connections) throw new Error(`found ${pids.length} backends, expected ${connections}`)
    const cpu = (): number => pids.reduce((s, p) => s + cpuSeconds(p), 0)
    let next = 0
    let fresh = 0
    const batchOf = (size: number): { users: string[], groups: number[] } => {
      const users = new Array<string>(size)
      for (let i = 0; i < size; i++) {
        const r = Math.random()
        if (mix === 'mixed' && i > 0 && r < 0.1) users[i] = users[Math.floor(Math.random() * i)]!
        else if (mix === 'mixed' && r < 0.15) users[i] = `new-${process.pid}-${fresh++}`
        else users[i] = 'u' + ((next++ * 7919) % KEYS)
      }
      return { users, groups: users.map((_, i) => i + 1) }
    }
    const run = async (fn: string, size: number, decisions: number): Promise<number> => {
      const batches = Math.ceil(decisions / size)
      const policies = new Array<string>(size).fill('bench')
      const costs = new Array<number>(size).fill(1)
      const caps = new Array<number>(size).fill(1e9)
      const rates = new Array<number>(size).fill(1)
      let left = batches
      const before = cpu()
      await Promise.all(Array.from({ length: connections }, async () => {
        while (left-- > 0) {
          const { users, groups } = batchOf(size)
          if (fn === 'rate_limit_decide_distinct') {
            await sql.unsafe(`SELECT count(*) FROM ${fn}($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[])`,
              [policies, users, costs, caps, rates] as never)
          } else {
            await sql.unsafe(`SELECT count(*) FROM ${fn}($1::int[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::float8[])`,
              [groups, policies, users, costs, caps, rates] as never)
          }
        }
      }))
      return (cpu() - before) * 1e6 / (batches * size)
    }
    console.log(`PostgreSQL backend CPU µs per decision; ${connections} batches in flight, ${perSample} decisions per sample, ${rounds} samples per function, ${mix} keys`)
    for (const size of sizes) {
      for (const fn of FNS) await run(fn, size, Math.min(perSample, 20 * size)) // warm plans and caches
      const samples: Record<string, number[]> = Object.fromEntries(FNS.map((f) => [f, []]))
      for (let r = 0; r < rounds; r++) {
        for (const fn of r % 2 === 0 ? FNS : [...FNS].reverse()) samples[fn]!.push(await run(fn, size, perSample))
      }
      const line = (fn: string): string => { const v = samples[fn]!; return `median ${median(v).toFixed(1)} (min ${Math.min(...v).toFixed(1)}, max ${Math.max(...v).toFixed(1)}; ${v.map((x) => x.toFixed(1)).join(' ')})` }
      for (const fn of FNS) console.log(`batch ${size}: ${fn} ${line(fn)}`)
      for (const fn of FNS.slice(1)) {
        const saved = samples[FNS[0]!]!.map((a, i) => 1 - samples[fn]![i]! / a)
        console.log(`batch ${size}: ${fn} against ${FNS[0]}, saved per paired sample ${saved.map((s) => (100 * s).toFixed(0) + '%').join(' ')}; median ${(100 * median(saved)).toFixed(0)}%`)
      }
    }
  } finally {
    await sql.end()
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  }
}

await main()
