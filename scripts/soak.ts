/**
 * `npm run soak`: mixed load against a gateway for a while, then a report of requests served,
 * errors, and the gateway's memory at the start and the end (and in between), to catch leaks
 * and slow failures that short tests miss. Not part of `npm test`.
 *
 * By default it starts everything it needs: a throwaway database on DATABASE_URL's server, its
 * own Redis key prefix on REDIS_URL, an upstream, and a gateway process (dist/src/main.js).
 * Against a gateway that is already running, set SOAK_TARGET (proxy URL) and SOAK_CONTROL
 * (control URL, for memory figures).
 *
 *   SOAK_SECONDS      how long to run (default 60)
 *   SOAK_CONCURRENCY  requests in flight at once (default 32)
 *   SOAK_USERS        distinct callers, plus 5 hot ones that are rate limited (default 2000)
 *
 * The mix: GETs from many callers (hot callers hit their limit), uploads of 1-64 KB, slow
 * upstream answers, upstream 5xx passed through, and bad requests (no caller id) that must get
 * 400. "Errors" are failures the gateway caused: network errors and 5xx that the upstream did
 * not send. Exits 1 if there were any.
 */
import { createInterface } from 'node:readline'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Agent, createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { packageRoot } from '../src/core/package.ts'

const seconds = Number(process.env.SOAK_SECONDS ?? 60)
const concurrency = Number(process.env.SOAK_CONCURRENCY ?? 32)
const users = Number(process.env.SOAK_USERS ?? 2000)
const databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

interface Target { proxyUrl: string, controlUrl: string | null, stop: () => Promise<void> }

/** An upstream that answers fast, slowly, with a 503, or echoes the body size. */
async function startUpstream (): Promise<Server> {
  const server = createServer((req, res) => {
    let size = 0
    req.on('data', (c: Buffer) => { size += c.length })
    req.on('end', () => {
      const path = req.url ?? '/'
      const reply = (status: number, body: string): void => {
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
        res.end(body)
      }
      if (path.startsWith('/slow')) setTimeout(() => reply(200, '{"slow":true}'), 50)
      else if (path.startsWith('/broken')) reply(503, '{"upstream":"unavailable"}')
      else reply(200, JSON.stringify({ path, bytes: size }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

async function startOwnGateway (): Promise<Target> {
  const name = `soak_${process.pid}_${Date.now().toString(36)}`
  const admin = postgres(databaseUrl, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const dbUrl = new URL(databaseUrl)
  dbUrl.pathname = '/' + name
  const prefix = name + ':'
  const upstream = await startUpstream()
  const child: ChildProcess = spawn(process.execPath, [join(packageRoot(), 'dist', 'src', 'main.js')], {
    env: {
      ...process.env,
      PORT: '0',
      CONTROL_PORT: '0',
      HOST: '127.0.0.1',
      DATABASE_URL: dbUrl.toString(),
      REDIS_URL: redisUrl,
      REDIS_KEY_PREFIX: prefix,
      UPSTREAM_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      LOG_LEVEL: 'info'
    },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const ports = await new Promise<{ port: number, control_port: number }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes('Starting server on')) resolve(JSON.parse(line) as { port: number, control_port: number })
      else if (/"level":(40|50|60)/.test(line)) process.stderr.write('gateway: ' + line + '\n')
    })
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)))
  })
  return {
    proxyUrl: `http://127.0.0.1:${ports.port}`,
    controlUrl: `http://127.0.0.1:${ports.control_port}`,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        await once(child, 'exit')
      }
      upstream.close()
      await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await admin.end()
      const redis = new Redis(redisUrl)
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', prefix + '*', 'COUNT', 1000)
        cursor = next
        if (keys.length > 0) await redis.del(...keys)
      } while (cursor !== '0')
      redis.disconnect()
    }
  }
}

interface Memory { rss: number, heap: number }

async function memory (controlUrl: string | null): Promise<Memory | null> {
  if (controlUrl === null) return null
  const text = await (await fetch(controlUrl + '/metrics')).text()
  const value = (name: string): number => Number(new RegExp(`^${name} ([0-9.e+]+)`, 'm').exec(text)?.[1] ?? NaN)
  return { rss: value('process_resident_memory_bytes'), heap: value('nodejs_heap_size_used_bytes') }
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1) + ' MB'

type Kind = 'get' | 'upload' | 'slow' | 'upstream-5xx' | 'bad'

function pick (): { kind: Kind, user: string | null } {
  const r = Math.random()
  // A tenth of the traffic comes from 5 hot callers, who run into their limits.
  const user = Math.random() < 0.1 ? `hot-${Math.floor(Math.random() * 5)}` : `user-${Math.floor(Math.random() * users)}`
  if (r < 0.70) return { kind: 'get', user }
  if (r < 0.82) return { kind: 'upload', user }
  if (r < 0.92) return { kind: 'slow', user }
  if (r < 0.96) return { kind: 'upstream-5xx', user }
  return { kind: 'bad', user: null }
}

const statuses = new Map<string, number>()
const errors = new Map<string, number>()
let served = 0

function count (map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1)
}

function one (agent: Agent, base: string): Promise<void> {
  const { kind, user } = pick()
  const path = kind === 'upload' ? '/upload' : kind === 'slow' ? '/slow' : kind === 'upstream-5xx' ? '/broken' : `/items/${Math.floor(Math.random() * 1000)}?q=1`
  const body = kind === 'upload' ? Buffer.alloc(1024 * (1 + Math.floor(Math.random() * 64)), 97) : null
  const headers: Record<string, string> = {}
  if (user !== null) headers['x-user-id'] = user
  if (body !== null) { headers['content-type'] = 'application/octet-stream'; headers['content-length'] = String(body.length) }
  return new Promise((resolve) => {
    const req = request(base + path, { method: body === null ? 'GET' : 'POST', agent, headers }, (res) => {
      res.resume()
      res.on('end', () => {
        served++
        const status = res.statusCode ?? 0
        count(statuses, String(status))
        const expected = status === 200 || status === 429 || (kind === 'bad' && status === 400) || (kind === 'upstream-5xx' && status === 503)
        if (!expected) count(errors, `${kind}: HTTP ${status}`)
        resolve()
      })
      res.on('error', (err) => { count(errors, `${kind}: ${err.message}`); resolve() })
    })
    req.on('error', (err) => { count(errors, `${kind}: ${(err as NodeJS.ErrnoException).code ?? err.message}`); resolve() })
    req.end(body ?? undefined)
  })
}

async function main (): Promise<void> {
  const target: Target = process.env.SOAK_TARGET !== undefined
    ? { proxyUrl: process.env.SOAK_TARGET.replace(/\/$/, ''), controlUrl: process.env.SOAK_CONTROL?.replace(/\/$/, '') ?? null, stop: async () => {} }
    : await startOwnGateway()
  console.log(`soak: ${seconds} s, ${concurrency} concurrent, ${users} callers (+5 hot) against ${target.proxyUrl}`)
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency })
  const start = await memory(target.controlUrl)
  const samples: Array<{ at: number, memory: Memory | null, served: number }> = [{ at: 0, memory: start, served: 0 }]
  const began = performance.now()
  const deadline = began + seconds * 1000
  const sampler = setInterval(() => {
    void memory(target.controlUrl).then((m) => samples.push({ at: (performance.now() - began) / 1000, memory: m, served }), () => {})
  }, 10_000)
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < deadline) await one(agent, target.proxyUrl)
  }))
  clearInterval(sampler)
  const elapsed = (performance.now() - began) / 1000
  const end = await memory(target.controlUrl)
  agent.destroy()

  const errorCount = [...errors.values()].reduce((a, b) => a + b, 0)
  console.log(`requests served: ${served} in ${elapsed.toFixed(1)} s (${Math.round(served / elapsed)}/s)`)
  console.log(`by status: ${[...statuses].sort().map(([s, n]) => `${s}: ${n}`).join(', ')}`)
  console.log(`errors: ${errorCount}${errorCount > 0 ? ' (' + [...errors].map(([e, n]) => `${e} x${n}`).join('; ') + ')' : ''}`)
  if (start !== null && end !== null) {
    console.log(`gateway memory at start: rss ${mb(start.rss)}, heap used ${mb(start.heap)}`)
    console.log(`gateway memory at end:   rss ${mb(end.rss)}, heap used ${mb(end.heap)}`)
    console.log('memory over time: ' + samples.filter((s) => s.memory !== null).map((s) => `${Math.round(s.at)}s rss ${mb(s.memory!.rss)} heap ${mb(s.memory!.heap)}`).join(' | '))
  } else {
    console.log('gateway memory: unknown (set SOAK_CONTROL to the gateway\'s control URL)')
  }
  await target.stop()
  process.exitCode = errorCount === 0 ? 0 : 1
}

await main()
