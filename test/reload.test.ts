// Hot reload: a changed config file (fs.watch) or SIGHUP swaps the policies in without dropping
// a request; an invalid config is refused with a log line and the running one stays.
import t from 'tap'
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { spawnGateway, startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { createRedisPrefix, createTestDatabase } from './helpers/stores.ts'
import { freePort } from './helpers/private-stores.ts'
import { startUpstream } from './helpers/upstream.ts'

function tempConfig (t: { teardown: (fn: () => unknown) => void }): { path: string, write: (doc: unknown) => void } {
  const dir = mkdtempSync(join(tmpdir(), 'gw-reload-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'gateway.yaml')
  let n = 0
  return {
    path,
    // Written beside and renamed over, as config-management tools do: never seen half-written.
    write: (doc) => {
      const tmp = `${path}.${n++}.tmp`
      writeFileSync(tmp, typeof doc === 'string' ? doc : stringify(doc))
      renameSync(tmp, path)
    }
  }
}

const policies = (capacity: number) => ({
  policies: { api: { capacity, refillPerSecond: 0.001 } },
  routes: [{ path: '/api', policy: 'api' }]
})

t.test('a changed config file is applied; an invalid one is refused and the old one stays', async (t) => {
  const file = tempConfig(t)
  file.write(policies(2))
  const gw = await startTestGateway(t, { configFile: file.path, watch: true })
  const limitOf = async (user: string) => (await send(gw.proxyUrl + '/api/x', { user })).headers.get('x-ratelimit-limit')
  t.equal(await limitOf('a'), '2')

  file.write(policies(7))
  await waitFor(async () => (await limitOf('b')) === '7', { what: 'the new capacity' })
  t.match(gw.logs.find((l) => l.msg === 'configuration reloaded'), { generation: 2, policies: ['default', 'api'] })

  file.write({ ...policies(9), routes: [{ path: '/api', policy: 'missing' }] })
  const rejected = await waitFor(() => gw.logs.find((l) => l.msg === 'configuration reload rejected; the current configuration stays'), { what: 'the rejection log line' })
  t.match(rejected!.error, /routes\.0\.policy: unknown policy "missing"/, 'the log line names the field')
  t.equal(await limitOf('c'), '7', 'the running configuration stays')
  t.equal(gw.runtime.current.policies.generation, 2)

  file.write('policies: [unclosed')
  await waitFor(() => gw.logs.filter((l) => l.msg === 'configuration reload rejected; the current configuration stays').length === 2, { what: 'a YAML error refused' })
  t.equal(await limitOf('d'), '7')

  file.write({ ...policies(4), proxy: { upstreamTimeoutMs: 1234 } })
  await waitFor(async () => (await limitOf('e')) === '4', { what: 'the next valid file' })
  t.match(gw.logs.find((l) => l.msg === 'changed settings in these sections take effect only after a restart'), { sections: ['proxy'] })

  const metrics = await (await fetch(gw.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_config_reloads_total\{result="applied"\} 2/)
  t.match(metrics, /gateway_config_reloads_total\{result="rejected"\} 2/)
})

t.test('SIGHUP reloads a running process under load without dropping a request', async (t) => {
  const file = tempConfig(t)
  file.write(policies(1000))
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, {
    DATABASE_URL: await createTestDatabase(t),
    REDIS_KEY_PREFIX: createRedisPrefix(t),
    UPSTREAM_URL: upstream.url,
    CONFIG_FILE: file.path,
    LOG_LEVEL: 'info'
  })
  const logged = (msg: string) => gw.output.filter((l) => l.includes(`"msg":"${msg}"`))

  let running = true
  const statuses = new Map<number, number>()
  const failures: string[] = []
  const limits = new Set<string>()
  const worker = async (w: number) => {
    for (let i = 0; running; i++) {
      try {
        const res = await fetch(`${gw.proxyUrl}/api/${i}`, { headers: { 'x-user-id': `load-${w}-${i % 4}` } })
        await res.arrayBuffer()
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
        limits.add(res.headers.get('x-ratelimit-limit') ?? 'none')
      } catch (err) {
        failures.push(String((err as Error).cause ?? err))
      }
    }
  }
  const load = Promise.all(Array.from({ length: 6 }, (_, w) => worker(w)))

  const total = () => [...statuses.values()].reduce((a, b) => a + b, 0)
  const reloads = 6
  for (let n = 1; n <= reloads; n++) {
    const before = total()
    await waitFor(() => total() >= before + 25, { what: 'traffic before the next reload' })
    file.write(n === 3 ? { routes: [{ path: '/api', policy: 'nope' }] } : policies(1000 + n))
    gw.child.kill('SIGHUP')
    const [expected, msg] = n === 3
      ? [1, 'configuration reload rejected; the current configuration stays']
      : [n - (n > 3 ? 1 : 0), 'configuration reloaded']
    await waitFor(() => logged(msg).filter((l) => l.includes('"reason":"SIGHUP"')).length >= expected, { what: `reload ${n} (${msg})` })
  }
  await waitFor(() => limits.has(String(1000 + reloads)), { what: 'a response under the last configuration' })
  running = false
  await load

  t.same(failures, [], 'no request failed at the connection level')
  t.same([...statuses.keys()], [201], `every one of ${total()} requests was forwarded`)
  t.ok(total() >= 150, `traffic throughout the reloads (${total()} requests)`)
  t.ok(limits.size >= 3, `responses came from several configurations: ${[...limits].sort().join(', ')}`)
  t.equal(gw.child.exitCode, null, 'SIGHUP did not stop the process')
  t.equal(await gw.stop('SIGTERM'), 0)
})

t.test('a reload that changes the fail mode during an outage applies it at once (open → closed)', async (t) => {
  // Neither store answers: a closed port for each (the gateway may start without PostgreSQL).
  const [pgPort, redisPort] = [await freePort(), await freePort()]
  const file = tempConfig(t)
  const outage = (mode: string) => ({ fallback: { mode, probeIntervalMs: 200 } })
  file.write(outage('open'))
  const gw = await startTestGateway(t, {
    configFile: file.path,
    watch: true,
    databaseUrl: `postgres://postgres@127.0.0.1:${pgPort}/none`,
    redisUrl: `redis://127.0.0.1:${redisPort}`,
    config: { postgres: { requiredAtStart: false, connectTimeoutSeconds: 1 }, redis: { connectTimeoutMs: 200 } }
  })
  const open = await send(gw.proxyUrl + '/x', { user: 'incident' })
  t.equal(open.status, 201, 'FAIL_MODE=open forwards to the upstream')
  t.equal(open.headers.get('x-data-source'), 'fail-open')

  file.write(outage('closed'))
  const closed = await waitFor(async () => { const r = await send(gw.proxyUrl + '/x', { user: 'incident' }); return r.status === 503 ? r : null }, { what: 'the closed fail mode' })
  t.equal(closed!.headers.get('retry-after'), '1')
  t.match(await closed!.json(), { status: 503, detail: /cannot reach its stores/ })
  t.ok(gw.logs.some((l) => l.msg === 'fail-over settings applied'), 'the change is logged as applied')
  t.notOk(gw.logs.some((l) => l.msg === 'changed settings in these sections take effect only after a restart'), 'not reported as needing a restart')
  t.ok(gw.logs.some((l) => l.msg.includes('FAIL_MODE=closed') && l.err !== undefined), 'the transition to closed is logged once, with the store error')
})
