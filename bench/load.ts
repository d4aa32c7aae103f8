/**
 * The load generator: wrk when installed (C, one thread: it leaves the most CPU to the servers
 * on a small machine), autocannon otherwise. Fixed-rate runs (latency at half saturation) use
 * autocannon's `overallRate`, which corrects for coordinated omission; wrk cannot pace.
 */
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'

export type Workload =
  /** GET / through a proxy, the caller header cycling over `callers` ids. */
  | { kind: 'proxy', prefix: string, callers: number }
  /** GET / through a proxy: every other request from one of `heavy` callers, the rest from one of `light` callers. */
  | { kind: 'mix', prefix: string, heavy: number, light: number }
  /** POST /v1/check with one key, cycling. */
  | { kind: 'check', prefix: string, callers: number }
  /** POST /v1/check with `batch` consecutive keys per request. */
  | { kind: 'check-batch', prefix: string, callers: number, batch: number }

export interface LoadResult {
  requests: number
  rps: number
  p50Ms: number
  p99Ms: number
  /** Responses outside 2xx/3xx (429s here). */
  non2xx: number
  /** Socket errors and timeouts. */
  errors: number
}

export function wrkAvailable (): boolean {
  if (process.env.BENCH_LOADGEN === 'autocannon') return false
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' })
    return true
  } catch (err) {
    // wrk --version exits 1 after printing its version
    return (err as { status?: number }).status === 1
  }
}

const scriptDir = mkdtempSync(join(tmpdir(), 'gw-bench-'))
let scriptCount = 0

function luaScript (w: Workload): string {
  const batch = w.kind === 'check-batch' ? w.batch : 1
  const count = w.kind === 'mix' ? 1 : w.callers
  const heavy = w.kind === 'mix' ? w.heavy : 1
  const light = w.kind === 'mix' ? w.light : 1
  return `
local kind, prefix, count, batch, i = "${w.kind}", "${w.prefix}", ${count}, ${batch}, -1
local heavy, light, n, h, l = ${heavy}, ${light}, 0, 0, 0
local function nextId() i = i + 1; if i >= count then i = 0 end; return prefix .. i end
request = function()
  if kind == "mix" then
    n = n + 1
    local id
    if n % 2 == 0 then h = (h + 1) % heavy; id = prefix .. "h" .. h else l = (l + 1) % light; id = prefix .. "l" .. l end
    return wrk.format("GET", "/", { ["x-user-id"] = id }, nil)
  elseif kind == "proxy" then
    return wrk.format("GET", "/", { ["x-user-id"] = nextId() }, nil)
  elseif kind == "check" then
    return wrk.format("POST", "/v1/check", { ["content-type"] = "application/json" }, '{"key":"' .. nextId() .. '"}')
  end
  local parts = {}
  for j = 1, batch do parts[j] = '{"key":"' .. nextId() .. '"}' end
  return wrk.format("POST", "/v1/check", { ["content-type"] = "application/json" }, '{"checks":[' .. table.concat(parts, ",") .. ']}')
end
done = function(s, latency, requests)
  io.write(string.format('BENCH_RESULT {"requests":%d,"duration_us":%d,"status":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\\n',
    s.requests, s.duration, s.errors.status, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
`
}

async function runWrk (url: string, w: Workload, connections: number, seconds: number): Promise<LoadResult> {
  const script = join(scriptDir, `w${scriptCount++}.lua`)
  writeFileSync(script, luaScript(w))
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '-s', script, url], { stdio: ['ignore', 'pipe', 'pipe'] })
    let text = ''
    child.stdout.on('data', (c: Buffer) => { text += c.toString() })
    child.stderr.on('data', (c: Buffer) => { text += c.toString() })
    child.on('exit', (code) => code === 0 ? resolve(text) : reject(new Error(`wrk exited ${code}: ${text}`)))
  })
  const m = /BENCH_RESULT (\{.*\})/.exec(out)
  if (m === null) throw new Error('no result from wrk: ' + out)
  const r = JSON.parse(m[1]!) as { requests: number, duration_us: number, status: number, errors: number, p50_us: number, p99_us: number }
  return { requests: r.requests, rps: r.requests / (r.duration_us / 1e6), p50Ms: r.p50_us / 1000, p99Ms: r.p99_us / 1000, non2xx: r.status, errors: r.errors }
}

function autocannonRequest (w: Workload): NonNullable<Parameters<typeof autocannon>[0]['requests']>[number] {
  if (w.kind === 'mix') {
    let n = 0
    return { method: 'GET', path: '/', setupRequest: (req) => ({ ...req, headers: { 'x-user-id': ++n % 2 === 0 ? `${w.prefix}h${(n / 2) % w.heavy}` : `${w.prefix}l${((n - 1) / 2) % w.light}` } }) }
  }
  let i = -1
  const next = (): string => { i = i + 1 >= w.callers ? 0 : i + 1; return w.prefix + i }
  if (w.kind === 'proxy') return { method: 'GET', path: '/', setupRequest: (req) => ({ ...req, headers: { 'x-user-id': next() } }) }
  const body = w.kind === 'check'
    ? () => JSON.stringify({ key: next() })
    : () => JSON.stringify({ checks: Array.from({ length: w.batch }, () => ({ key: next() })) })
  return { method: 'POST', path: '/v1/check', setupRequest: (req) => ({ ...req, headers: { 'content-type': 'application/json' }, body: body() }) }
}

async function runAutocannon (url: string, w: Workload, connections: number, seconds: number, rate?: number): Promise<LoadResult> {
  const r = await autocannon({ url, connections, duration: seconds, requests: [autocannonRequest(w)], ...(rate === undefined ? {} : { overallRate: Math.round(rate) }) })
  return { requests: r.requests.total, rps: r.requests.total / r.duration, p50Ms: r.latency.p50, p99Ms: r.latency.p99, non2xx: r.non2xx, errors: r.errors + r.timeouts }
}

export const loadGenerator = wrkAvailable() ? 'wrk 1 thread' : 'autocannon'

/** Saturation run: as many requests as `connections` keep-alive connections can carry. */
export async function saturate (url: string, w: Workload, connections: number, seconds: number): Promise<LoadResult> {
  return loadGenerator === 'autocannon' ? await runAutocannon(url, w, connections, seconds) : await runWrk(url, w, connections, seconds)
}

/** Each caller of a proxy workload once, in order (autocannon's `amount`): its buckets exist before a steady-state run. */
export async function visitEach (url: string, w: Extract<Workload, { kind: 'proxy' }>, connections: number): Promise<LoadResult> {
  const r = await autocannon({ url, connections, amount: w.callers, requests: [autocannonRequest(w)] })
  return { requests: r.requests.total, rps: r.requests.total / r.duration, p50Ms: r.latency.p50, p99Ms: r.latency.p99, non2xx: r.non2xx, errors: r.errors + r.timeouts }
}

/** Fixed-rate run (autocannon), for latency at a given load rather than at saturation. */
export async function paced (url: string, w: Workload, connections: number, seconds: number, rate: number): Promise<LoadResult> {
  return await runAutocannon(url, w, connections, seconds, rate)
}
