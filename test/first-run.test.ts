// The zero-setup first run: no DATABASE_URL and no PostgreSQL answering, so the gateway runs
// on the embedded PostgreSQL (PGlite) and without Redis. The machine's shared PostgreSQL and
// Redis keep running: the "default" addresses are pointed (by a config file, as an operator
// would) at loopback ports where nothing listens.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../src/config/load.ts'
import { packageRoot } from '../src/core/package.ts'
import { loopbackAddress, planFirstRun, type Probe } from '../src/first-run.ts'
import { SCENARIOS } from '../scripts/scenarios-lib.ts'
import { spawnGateway } from './helpers/gateway.ts'
import { burst, send } from './helpers/http.ts'
import { startUpstream } from './helpers/upstream.ts'
import { freePort as deadPort } from './helpers/private-stores.ts'

const ADMIN_TOKEN = 'first-run-admin-token-0123456789'


t.test('when the embedded PostgreSQL is chosen', async (t) => {
  const config = (env: Record<string, string> = {}) => loadConfig({ env, skipDefaultFile: true })
  const calls: string[] = []
  const probe = (answers: Record<string, 'open' | 'refused' | 'unreachable'>): Probe => async (host, port) => {
    calls.push(`${host}:${port}`)
    return answers[`${host}:${port}`] ?? 'open'
  }
  const none = probe({ '127.0.0.1:5432': 'refused', '127.0.0.1:6379': 'refused' })

  t.match(await planFirstRun(config(), {}, none), { embeddedPostgres: true, disableRedis: true, reason: /nothing listens on 127\.0\.0\.1:5432/ }, 'nothing local: embedded, no Redis')
  t.match(await planFirstRun(config(), {}, probe({ '127.0.0.1:5432': 'refused' })), { embeddedPostgres: true, disableRedis: false }, 'a local Redis is still used')
  t.match(await planFirstRun(config(), {}, probe({})), { embeddedPostgres: false }, 'a local PostgreSQL answers: use it')
  t.match(await planFirstRun(config(), {}, probe({ '127.0.0.1:5432': 'unreachable' })), { embeddedPostgres: false }, 'only "nothing listens" counts, not a timeout')
  calls.length = 0
  t.match(await planFirstRun(config({ DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres' }), { DATABASE_URL: 'x' }, none), { embeddedPostgres: false }, 'DATABASE_URL set: never embedded, even if nothing answers')
  t.same(calls, [], 'and nothing is probed')
  const remote = loadConfig({ env: {}, skipDefaultFile: true, overrides: { postgres: { url: 'postgres://u@db.internal:5432/x' } } })
  t.match(await planFirstRun(remote, {}, none), { embeddedPostgres: false }, 'a remote database is never replaced')
  t.match(await planFirstRun(config({ DATABASE_EMBEDDED: 'never' }), {}, none), { embeddedPostgres: false }, 'DATABASE_EMBEDDED=never')
  t.match(await planFirstRun(config({ DATABASE_EMBEDDED: 'always' }), {}, probe({})), { embeddedPostgres: true, disableRedis: false }, 'DATABASE_EMBEDDED=always')
  t.match(await planFirstRun(config({ REDIS_URL: 'redis://127.0.0.1:6379' }), { REDIS_URL: 'redis://127.0.0.1:6379' }, none), { embeddedPostgres: true, disableRedis: false }, 'REDIS_URL set: Redis kept (the breaker handles an outage)')
  t.throws(() => config({ DATABASE_EMBEDDED: 'sometimes' }), /postgres\.embedded.*DATABASE_EMBEDDED/, 'a bad mode names the field')

  t.same(loopbackAddress('postgres://a@localhost/x', 5432), { host: 'localhost', port: 5432 })
  t.same(loopbackAddress('postgres://a@[::1]:6543/x', 5432), { host: '::1', port: 6543 })
  t.equal(loopbackAddress('postgres://a@localhost/x?host=/var/run/postgresql', 5432), null, 'a Unix socket is not probed')
  t.equal(loopbackAddress('postgres://a@10.0.0.5/x', 5432), null)
})

t.test('npm start with nothing installed: PGlite, no Redis, the core scenarios pass', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-firstrun-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const dataDir = join(dir, 'pglite')
  const configFile = join(dir, 'laptop.yaml')
  writeFileSync(configFile, [
    'postgres:',
    `  url: postgres://postgres@127.0.0.1:${await deadPort()}/postgres`,
    `  embeddedDir: ${dataDir}`,
    'redis:',
    `  url: redis://127.0.0.1:${await deadPort()}`,
    ''
  ].join('\n'))
  const upstream = await startUpstream(t)
  // No DATABASE_URL, no REDIS_URL: what a first-time user has.
  const env = { CONFIG_FILE: configFile, UPSTREAM_URL: upstream.url, ADMIN_TOKEN }
  // PGlite compiles its WASM and runs initdb on the first start: seconds, more on a loaded machine.
  const gw = await spawnGateway(t, env, { startTimeoutMs: 120_000 })
  const logs = gw.output.join('\n')
  t.match(logs, /Using the embedded PostgreSQL \(PGlite\) in .*single-process development setup/, 'says plainly what it runs on')
  t.match(logs, /running without the Redis cache/, 'and that Redis is off')
  t.notMatch(logs, /Redis unavailable/, 'no outage noise for a Redis that was never there')
  t.match(logs, /migrations applied/, 'the same migrations ran')

  const target = gw.proxyUrl + '/'
  for (const [id, scenario] of SCENARIOS) {
    const result = await scenario(target, `first-run-${id}`)
    if (id === 'cache-vs-db') {
      // Without Redis the second and third requests are decided (and reported) by PostgreSQL.
      t.same(result.outcomes.map((o) => o.source), ['new-user', 'postgres', 'postgres'], 'cache-vs-db: sources without a cache')
      continue
    }
    for (const e of result.expectations) t.ok(e.ok, `${id}: ${e.what} (expected ${e.expected}, got ${e.actual})`)
  }
  // The safety invariant, capacity + rate × elapsed: exactly 10 unless the burst took over 1 s.
  const started = performance.now()
  const replies = await burst(gw.proxyUrl + '/x', 'first-run-40', 40)
  const bound = 10 + Math.floor((performance.now() - started) / 1000)
  const passed = replies.filter((r) => r.status === 201).length
  t.ok(passed >= 10 && passed <= bound, `40 concurrent on a fresh key: ${passed} allowed (10, at most ${bound})`)

  const ready = await send(gw.controlUrl + '/readyz')
  t.equal(ready.status, 200, 'ready on the embedded PostgreSQL')

  // Admin overrides go through the table's NOTIFY trigger and the LISTEN session: both on PGlite.
  const put = await send(gw.controlUrl + '/v1/overrides/first-run-vip', {
    method: 'PUT', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ capacity: 3 })
  })
  t.equal(put.status, 200, `override set (${put.body})`)
  const vip = await Promise.all(Array.from({ length: 5 }, () => send(gw.proxyUrl + '/x', { user: 'first-run-vip' })))
  t.equal(vip.filter((r) => r.status === 201).length, 3, 'the override applies: 3 of 5 allowed')

  // PGlite is one backend in one process: a second gateway on the same folder must not start.
  const other = spawnSync(process.execPath, [join(packageRoot(), 'dist', 'src', 'main.js')], {
    env: { PATH: process.env.PATH ?? '', PORT: '0', CONTROL_PORT: '0', HOST: '127.0.0.1', ...env }, encoding: 'utf8', timeout: 60_000
  })
  t.equal(other.status, 1, 'a second gateway on the same data folder exits 1')
  t.match(other.stdout, /in use by process \d+/, 'and says why')

  t.equal(await gw.stop('SIGTERM'), 0, 'SIGTERM: clean exit')
  t.match(gw.output.join('\n'), /shutdown complete/)

  // The buckets live in the data folder: an exhausted caller is still exhausted after a restart.
  // (Restarted with a very slow refill, so the seconds a restart takes cannot refill the bucket.)
  const again = await spawnGateway(t, { ...env, RATE_LIMIT_REFILL_PER_SECOND: '0.001' }, { startTimeoutMs: 120_000 })
  t.notMatch(again.output.join('\n'), /migrations applied/, 'nothing left to migrate')
  const res = await send(again.proxyUrl + '/x', { user: 'first-run-40' })
  t.equal(res.status, 429, 'state kept across restarts')
  t.equal(res.headers.get('x-data-source'), 'postgres')
  t.equal(await again.stop('SIGTERM'), 0)
})
