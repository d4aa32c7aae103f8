// WORKERS / proxy.workers: one gateway as a cluster primary and worker processes sharing the
// proxy and control ports (src/workers). Real processes, real PostgreSQL and Redis.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { request, type IncomingHttpHeaders } from 'node:http'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig, ConfigError } from '../src/config/load.ts'
import { packageRoot } from '../src/core/package.ts'
import { perWorker, workerCount } from '../src/workers/count.ts'
import { spawnGateway, spawnTwoWorkers as twoWorkers, type SpawnedGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { createRedisPrefix, createTestDatabase } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const main = join(packageRoot(), 'dist', 'src', 'main.js')
const ADMIN_TOKEN = 'workers-test-admin-token'

interface Fresh { status: number, headers: IncomingHttpHeaders, body: string, error: string | null }

/**
 * One request on a connection of its own: the primary hands each new connection to the next
 * worker, so a run of these reaches every worker (a keep-alive connection stays with one).
 */
function fresh (url: string, user: string | null, init: { method?: string, headers?: Record<string, string> } = {}): Promise<Fresh> {
  return new Promise((resolve) => {
    const headers = { ...init.headers, ...(user === null ? {} : { 'x-user-id': user }) }
    const req = request(url, { agent: false, method: init.method ?? 'GET', headers }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, error: null }))
      res.on('error', (err) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, error: err.message }))
    })
    req.on('error', (err) => resolve({ status: 0, headers: {}, body: '', error: (err as NodeJS.ErrnoException).code ?? err.message }))
    req.end()
  })
}

interface Line { msg?: string, worker?: number | string, role?: string, pid?: number, caller?: string, source?: string, [k: string]: unknown }

/** The JSON log lines the gateway (primary and workers: one stdout) has written so far. */
function lines (gw: SpawnedGateway): Line[] {
  return gw.output.flatMap((chunk) => chunk.split('\n')).filter((l) => l.startsWith('{')).map((l) => { try { return JSON.parse(l) as Line } catch { return {} } })
}

/** Sum of a metric's samples in a Prometheus text exposition, optionally only those matching. */
function sample (text: string, name: string, labels = ''): number {
  let total = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue
    if (!line.includes(labels)) continue
    total += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return total
}

async function metrics (gw: SpawnedGateway): Promise<string> {
  return await (await fetch(gw.controlUrl + '/metrics')).text()
}

t.test('WORKERS and proxy.workers: parsed and validated, the field named', async (t) => {
  t.equal(loadConfig({ env: {} }).proxy.workers, 1, 'default 1')
  t.equal(loadConfig({ env: { WORKERS: '3' } }).proxy.workers, 3)
  t.equal(loadConfig({ env: { WORKERS: 'auto' } }).proxy.workers, 'auto')
  t.equal(workerCount('auto', () => 16), 16, 'auto: one per core')
  t.equal(workerCount(4), 4)
  for (const bad of ['0', '-1', '1.5', 'many', 'AUTO']) {
    t.throws(() => loadConfig({ env: { WORKERS: bad } }), new ConfigError(`invalid configuration:\n  proxy.workers: must be a whole number from 1 to 1024, or "auto" (from WORKERS)`), `WORKERS=${bad}`)
  }
  const config = loadConfig({ env: { FAIL_LOCAL_REPLICAS: '3' } })
  t.equal(perWorker(config, 4).fallback.localReplicas, 12, 'each worker takes its share of the gateway\'s local fail-mode share')
  t.equal(perWorker(config, 1), config, 'one process: unchanged')
})

t.test('a bad WORKERS value stops start-up with exit 2, naming the field and the variable', async (t) => {
  const run = spawnSync(process.execPath, [main], { env: { PATH: process.env.PATH ?? '', WORKERS: 'lots', PORT: '0', CONTROL_PORT: '0' }, encoding: 'utf8', timeout: 20_000 })
  t.equal(run.status, 2)
  t.match(run.stderr, /proxy\.workers: must be a whole number from 1 to 1024, or "auto" \(from WORKERS\)/)
})

t.test('a worker that cannot start (port in use) ends the gateway with exit 1, not a restart loop', async (t) => {
  const squatter = createServer()
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { squatter.close() })
  const port = (squatter.address() as { port: number }).port
  const run = spawnSync(process.execPath, [main], {
    env: { PATH: process.env.PATH ?? '', WORKERS: '2', HOST: '127.0.0.1', PORT: String(port), CONTROL_PORT: '0', DATABASE_DECISION_TIMEOUT_MS: '5000', DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t) },
    encoding: 'utf8',
    timeout: 40_000
  })
  t.equal(run.status, 1, 'exit 1')
  t.match(run.stdout, /EADDRINUSE/, 'the worker says why')
  t.match(run.stdout, /could not start: worker \d \(pid \d+\) exited with code 1 before it was serving/, 'the primary says it stops')
  t.notMatch(run.stdout, /starting a new one/, 'no restart')
})

t.test('WORKERS=2: both workers serve, exactly the capacity across them, metrics and readiness of both', async (t) => {
  const gw = await twoWorkers(t, { RATE_LIMIT_CAPACITY: '10', RATE_LIMIT_REFILL_PER_SECOND: '0.01' })
  const started = lines(gw).find((l) => l.msg?.startsWith('Starting server on'))
  t.match(started, { role: 'primary', workers: 2 }, 'one start line, from the primary, once both serve')
  t.equal((started!.pids as number[]).length, 2)

  // Requests on connections of their own reach both workers (their access-log lines say which).
  let sent = 0
  const served = await waitFor(async () => {
    const r = await fresh(gw.proxyUrl + '/spread', `spread-${sent++}`)
    t.equal(r.status, 201)
    const pids = new Set(lines(gw).filter((l) => l.msg === 'request' && typeof l.caller === 'string' && l.caller.startsWith('spread-')).map((l) => l.pid))
    return pids.size === 2 ? pids : null
  }, { timeoutMs: 20_000, what: 'requests served by two worker pids' })
  t.same([...served!].sort(), [...(started!.pids as number[])].sort(), 'the two pids are the workers the primary started')

  // 40 concurrent requests on one key, each on its own connection (spread over both workers).
  const replies = await Promise.all(Array.from({ length: 40 }, async () => await fresh(gw.proxyUrl + '/exact', 'exact')))
  t.equal(replies.filter((r) => r.status === 201).length, 10, 'exactly the capacity allowed across both workers')
  t.equal(replies.filter((r) => r.status === 429).length, 30, 'the rest refused')
  const exactPids = await waitFor(() => {
    const pids = new Set(lines(gw).filter((l) => l.msg === 'request' && l.caller === 'exact').map((l) => l.pid))
    return pids.size === 2 ? pids : null
  }, { what: 'both workers to have decided for the shared key' })
  t.equal(exactPids!.size, 2, 'both workers decided for the shared key')

  // /metrics on the shared control port: whichever worker answers, every worker's counts summed.
  const total = sent + 40
  for (let i = 0; i < 3; i++) {
    const text = await metrics(gw)
    t.equal(sample(text, 'gateway_decisions_total'), total, `scrape ${i + 1}: decisions of both workers summed`)
    t.equal(sample(text, 'gateway_decisions_total', 'result="allowed"'), sent + 10)
    t.ok(sample(text, 'gateway_worker_decisions_total', 'worker="1"') > 0 && sample(text, 'gateway_worker_decisions_total', 'worker="2"') > 0, 'each worker\'s own share is labelled')
    t.equal(sample(text, 'gateway_worker_decisions_total'), total, 'the shares add up')
    t.equal(sample(text, 'gateway_store_up', 'store="postgres"'), 1, 'a gauge of state is not summed: up is 1, not 2')
    t.equal(sample(text, 'gateway_workers'), 2)
    t.equal(sample(text, 'gateway_build_info'), 1)
  }

  const ready = await send(gw.controlUrl + '/readyz')
  t.equal(ready.status, 200)
  t.match(ready.json(), { status: 'ready', expected_workers: 2, workers: [{ worker: 1, ready: true }, { worker: 2, ready: true }] })

  // POST /v1/check on the control port works whichever worker takes it, on the same buckets.
  const checks = await Promise.all(Array.from({ length: 4 }, async () => await fresh(gw.controlUrl + '/v1/check', null, { method: 'POST', headers: { 'content-type': 'application/json' } })))
  t.ok(checks.every((c) => c.status === 400 || c.status === 415), 'malformed checks are refused by both')
  const check = await send(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: 'exact' }) })
  t.match(check.json(), { allowed: false, remaining: 0 }, 'a check sees the bucket both workers spent')
})

t.test('an admin reset reaches every worker\'s over-limit cache', async (t) => {
  const gw = await twoWorkers(t, { RATE_LIMIT_CAPACITY: '4', RATE_LIMIT_REFILL_PER_SECOND: '0.001', LOCAL_DENY_CACHE: 'true', ADMIN_TOKEN })
  // Spend the bucket, then refuse until both workers refuse from their own memory.
  await waitFor(async () => {
    await fresh(gw.proxyUrl + '/x', 'hot')
    const local = new Set(lines(gw).filter((l) => l.msg === 'request' && l.caller === 'hot' && l.source === 'local').map((l) => l.worker))
    return local.size === 2
  }, { timeoutMs: 20_000, what: 'both workers to refuse "hot" from their over-limit cache' })

  const reset = await send(gw.controlUrl + '/v1/buckets/hot', { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(reset.status, 200)
  // Four fresh connections alternate between the workers: each must see the full bucket.
  const after = []
  for (let i = 0; i < 4; i++) after.push(await fresh(gw.proxyUrl + '/x', 'hot'))
  t.same(after.map((r) => r.status), [201, 201, 201, 201], 'the whole capacity again, whichever worker decides')
  t.notOk(after.some((r) => r.headers['x-data-source'] === 'local'), 'none answered from a stale over-limit cache')
  // Access lines are buffered per worker (up to a second): found by request id, not by order.
  const ids = new Set(after.map((r) => r.headers['x-request-id']))
  const deciders = await waitFor(() => {
    const mine = lines(gw).filter((l) => l.msg === 'request' && ids.has(l.request_id as string))
    return mine.length === ids.size ? new Set(mine.map((l) => l.worker)) : null
  }, { what: 'the access lines of the four requests after the reset' })
  t.equal(deciders!.size, 2, 'both workers served after the reset')
})

t.test('reload: a changed file and SIGHUP to the primary are applied by every worker', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-workers-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'gateway.yaml')
  let n = 0
  const write = (capacity: number): void => {
    const tmp = `${file}.${n++}`
    writeFileSync(tmp, `policies:\n  api: { capacity: ${capacity}, refillPerSecond: 0.001 }\nroutes:\n  - { path: /api, policy: api }\n`)
    renameSync(tmp, file)
  }
  write(2)
  const gw = await twoWorkers(t, { CONFIG_FILE: file })
  const reloads = (): Line[] => lines(gw).filter((l) => l.msg === 'configuration reloaded')
  /** The limit each worker applies, from fresh connections until both have answered. */
  const limits = async (tag: string): Promise<Map<unknown, string>> => {
    const seen = new Map<unknown, string>()
    let i = 0
    await waitFor(async () => {
      const user = `${tag}-${i++}`
      const r = await fresh(gw.proxyUrl + '/api/x', user)
      const line = await waitFor(() => lines(gw).find((l) => l.msg === 'request' && l.caller === user), { what: 'its access-log line' })
      seen.set(line!.worker, String(r.headers['x-ratelimit-limit']))
      return seen.size === 2
    }, { timeoutMs: 20_000, what: 'answers from both workers' })
    return seen
  }
  t.same([...(await limits('before')).values()], ['2', '2'])

  write(7)
  await waitFor(() => reloads().length === 2, { what: 'both workers to reload the changed file' })
  t.same(new Set(reloads().map((l) => l.worker)), new Set([1, 2]), 'each worker watches and applies it')
  t.same([...(await limits('file')).values()], ['7', '7'])

  // SIGHUP goes to the primary (the one pid an orchestrator knows); it relays to every worker.
  gw.child.kill('SIGHUP')
  await waitFor(() => reloads().length === 4, { what: 'both workers to reload on SIGHUP' })
  t.same(new Set(reloads().slice(2).map((l) => l.worker)), new Set([1, 2]))
  t.match(reloads().slice(2), [{ reason: 'SIGHUP (relayed by the primary)', generation: 3 }, { reason: 'SIGHUP (relayed by the primary)', generation: 3 }])
})

t.test('a worker that dies is replaced, once logged, and service continues', async (t) => {
  const gw = await twoWorkers(t)
  const pids = lines(gw).find((l) => l.msg?.startsWith('Starting server on'))!.pids as number[]
  for (let i = 0; i < 6; i++) t.equal((await fresh(gw.proxyUrl + '/before', `before-${i}`)).status, 201)
  const before = sample(await metrics(gw), 'gateway_decisions_total')
  t.equal(before, 6)
  process.kill(pids[0]!, 'SIGKILL')
  const died = await waitFor(() => lines(gw).find((l) => l.msg === 'worker exited unexpectedly; starting a new one'), { what: 'the death to be logged' })
  t.match(died, { role: 'primary', worker: 1, worker_pid: pids[0], signal: 'SIGKILL', restart_in_ms: 200 })
  // The other worker keeps serving while the first is replaced.
  for (let i = 0; i < 4; i++) t.equal((await fresh(gw.proxyUrl + '/during', `during-${i}`)).status, 201, 'served during the replacement')
  const replaced = await waitFor(() => lines(gw).find((l) => l.msg === 'worker replaced and serving'), { timeoutMs: 20_000, what: 'the replacement' })
  t.equal(replaced!.worker, 1)
  t.not(replaced!.worker_pid, pids[0], 'a new process')
  t.equal(lines(gw).filter((l) => l.msg === 'worker exited unexpectedly; starting a new one').length, 1, 'one log line for one death')
  const ready = await waitFor(async () => { const r = await send(gw.controlUrl + '/readyz'); return r.status === 200 ? r : null }, { what: 'readiness with both workers' })
  t.same(ready!.json<{ workers: Array<{ pid: number }> }>().workers.map((w) => w.pid).sort(), [replaced!.worker_pid, pids[1]].sort())
  t.equal(sample(await metrics(gw), 'gateway_worker_restarts_total'), 1)
  // The dead worker's counts stay in the sum (as of the last scrape): the counter never drops.
  t.equal(sample(await metrics(gw), 'gateway_decisions_total'), before + 4, 'decisions of the dead worker still counted')
  t.equal(sample(await metrics(gw), 'gateway_workers'), 2)
})

t.test('SIGTERM to the primary: every worker finishes its in-flight requests, exit 0', async (t) => {
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, { WORKERS: '2', DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url, ACCESS_LOG: 'true' }, { startTimeoutMs: 40_000 })
  // Six slow requests, each on its own connection: both workers hold some when the signal comes.
  const inFlight = Promise.all(Array.from({ length: 6 }, async (_, i) => await fresh(`${gw.proxyUrl}/slow/1000?i=${i}`, `slow-${i}`)))
  await waitFor(() => upstream.received.filter((r) => r.url.startsWith('/slow/')).length === 6, { what: 'the requests to reach the upstream' })
  const exited = gw.stop('SIGTERM')
  const replies = await inFlight
  t.same(replies.map((r) => [r.status, r.body]), Array.from({ length: 6 }, () => [200, 'slow']), 'every accepted request completed')
  t.equal(await exited, 0, 'exit code 0')
  const done = lines(gw).filter((l) => l.msg === 'shutdown complete')
  t.same(new Set(done.map((l) => l.role === 'primary' ? 'primary' : l.worker)), new Set([1, 2, 'primary']), 'both workers and the primary shut down')
  t.notOk(lines(gw).some((l) => l.msg === 'worker exited unexpectedly; starting a new one'), 'no worker restarted while stopping')
  const served = new Set(lines(gw).filter((l) => l.msg === 'request' && String(l.caller).startsWith('slow-')).map((l) => l.worker))
  t.equal(served.size, 2, 'both workers had requests in flight')
  await t.rejects(fetch(gw.proxyUrl + '/x', { headers: { 'x-user-id': 'late' } }), 'no longer accepting')
})
