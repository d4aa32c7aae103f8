/**
 * What the gateway costs before the limiter: one allow-listed caller (access.allow: no bucket is
 * touched) through the gateway, against the floor (Fastify + @fastify/http-proxy, no limiter),
 * server CPU µs per request from /proc, the two taking turns so a shared machine loads both
 * alike (docs/performance.md, "Before the limiter"). A quick check, not the benchmark:
 *
 *   npm run build && node dist/bench/allow-listed.js
 *
 * ALLOW_ROUNDS (default 4), ALLOW_SECONDS (per run, default 5), ALLOW_CONNECTIONS (default 32),
 * ALLOW_PROFILE=1: the gateway also runs under --cpu-prof and the top frames are printed.
 * ALLOW_BASE=<dist/src/main.js of another build>: that gateway takes turns too (before/after).
 */
import postgres from 'postgres'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { saturate } from './load.ts'
import { startChild, type Child } from './procs.ts'
import { median, takeTurns } from './turns.ts'
import { summarise } from './profile.ts'

const here = dirname(fileURLToPath(import.meta.url))
const GATEWAY_MAIN = join(here, '..', 'src', 'main.js')
const rounds = Number(process.env.ALLOW_ROUNDS ?? 4)
const seconds = Number(process.env.ALLOW_SECONDS ?? 5)
const connections = Number(process.env.ALLOW_CONNECTIONS ?? 32)
const profile = process.env.ALLOW_PROFILE === '1'
const env = process.env

async function main (): Promise<void> {
  const children: Child[] = []
  // The gateway migrates a database at start-up: a private one, dropped at the end.
  const admin = postgres(env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres', { max: 1, onnotice: () => {} })
  const name = `bench_allow_${process.pid}_${randomBytes(3).toString('hex')}`
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const databaseUrl = new URL(env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')
  databaseUrl.pathname = '/' + name
  try {
    const upstream = await startChild('upstream', join(here, 'upstream.js'), { PATH: env.PATH }, (l) => l.ready === true)
    children.push(upstream)
    const upstreamUrl = `http://127.0.0.1:${upstream.ready.port as number}`
    const floor = await startChild('floor', join(here, 'peer.js'), { PATH: env.PATH, PEER_LIMITER: 'none', UPSTREAM_URL: upstreamUrl }, (l) => l.ready === true)
    children.push(floor)
    const dir = mkdtempSync(join(tmpdir(), 'allow-listed-'))
    const configFile = join(dir, 'config.yaml')
    writeFileSync(configFile, 'access:\n  allow: [allowed0]\n')
    const startGateway = async (label: string, main: string, flags: string[]): Promise<Child> => {
      const child = await startChild(label, main, {
        ...env, PORT: '0', CONTROL_PORT: '0', HOST: '127.0.0.1', CONTROL_HOST: '127.0.0.1', UPSTREAM_URL: upstreamUrl, CONFIG_FILE: configFile, LOG_LEVEL: 'info',
        DATABASE_URL: databaseUrl.toString(), REDIS_KEY_PREFIX: name + ':'
      }, (l) => typeof l.msg === 'string' && l.msg.startsWith('Starting server on'), ['--max-semi-space-size=8', '--heap-growing-percent=50', ...flags])
      children.push(child)
      return child
    }
    const gateway = await startGateway('gateway', GATEWAY_MAIN, profile ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [])
    const servers = [
      { name: 'floor', child: floor, url: `http://127.0.0.1:${floor.ready.port as number}` },
      { name: 'gateway', child: gateway, url: `http://127.0.0.1:${gateway.ready.port as number}` }
    ]
    if (env.ALLOW_BASE !== undefined) {
      const base = await startGateway('base', env.ALLOW_BASE, [])
      servers.push({ name: 'base', child: base, url: `http://127.0.0.1:${base.ready.port as number}` })
    }
    const workload = { kind: 'proxy', prefix: 'allowed', callers: 1 } as const
    for (const s of servers) await saturate(s.url, workload, connections, 4) // compile the hot paths
    const turns = await takeTurns(servers.map((s) => ({ id: s.name, pid: s.child.proc.pid!, url: s.url, workload })), rounds, seconds, connections)
    for (const round of turns) {
      for (const [id, { result }] of round) if (result.non2xx > 0 || result.errors > 0) throw new Error(`${id}: ${result.non2xx} non-2xx, ${result.errors} errors`)
    }
    const us = Object.fromEntries(servers.map((s) => [s.name, turns.map((round) => round.get(s.name)!.cpuUs)]))
    const rps = Object.fromEntries(servers.map((s) => [s.name, turns.map((round) => round.get(s.name)!.result.rps)]))
    console.log(`allow-listed caller, ${connections} connections, ${rounds} x ${seconds} s per server, turns alternating; server CPU µs per request`)
    for (const s of servers) {
      console.log(`${s.name.padEnd(8)} µs/req median ${median(us[s.name]!).toFixed(1)} (${us[s.name]!.map((x) => x.toFixed(1)).join(' ')}); req/s ${rps[s.name]!.map((x) => x.toFixed(0)).join(' ')}`)
    }
    for (const s of servers.slice(1)) {
      const ratios = us[s.name]!.map((g, i) => g / us.floor![i]!)
      console.log(`${s.name} / floor per round: ${ratios.map((x) => x.toFixed(2)).join(' ')}; median ${median(ratios).toFixed(2)}`)
    }
    if (profile) {
      await gateway.stop()
      const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
      if (file !== undefined) {
        const { frames, areas } = summarise(join(dir, file), Number(env.ALLOW_TOP ?? 30))
        console.log('areas: ' + areas.slice(0, 14).map((a) => `${a.area} ${a.selfPct.toFixed(1)}%`).join(', '))
        for (const f of frames) console.log(`${f.selfPct.toFixed(2).padStart(6)}%  ${f.name}  ${f.where}`)
      }
    }
  } finally {
    for (const c of children.reverse()) await c.stop()
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  }
}

await main()
