// The gateway as a process: several sharing the stores, signals, start-up failures.
import { execFile, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { promisify } from 'node:util'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import postgres from 'postgres'
import t from 'tap'
import { packageRoot } from '../src/core/package.ts'
import { isConnectionFault } from '../src/stores/postgres/connection-faults.ts'
import { spawnGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const main = join(packageRoot(), 'dist', 'src', 'main.js')

for (const mode of ['strict', 'write-behind'] as const) t.test(`two gateway processes sharing the stores allow exactly the capacity in total (${mode})`, async (t) => {
  const db = await createTestDatabase(t)
  const prefix = createRedisPrefix(t)
  const upstream = await startUpstream(t)
  const env = { DATABASE_URL: db, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix, UPSTREAM_URL: upstream.url, CONSISTENCY: mode }
  // Started together: both run migrations at once, serialised by the advisory lock.
  const [a, b] = await Promise.all([spawnGateway(t, env), spawnGateway(t, env)])
  for (const key of ['shared-1', 'shared-2']) {
    const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => send((i % 2 === 0 ? a : b).proxyUrl + '/x', { user: key })))
    t.equal(replies.filter((r) => r.status === 201).length, 10, `${key}: exactly 10 allowed across both`)
    t.equal(replies.filter((r) => r.status === 429).length, 30, `${key}: the rest blocked (${[...new Set(replies.map((r) => `${r.status} ${r.headers.get('x-data-source') ?? ''}`))].join(', ')})`)
  }
})

for (const mode of ['strict', 'write-behind'] as const) t.test(`two gateway processes, a plan of two buckets per request: all or nothing, exact in total (${mode})`, async (t) => {
  const db = await createTestDatabase(t)
  const prefix = createRedisPrefix(t)
  const upstream = await startUpstream(t)
  const configFile = join(mkdtempSync(join(tmpdir(), 'gw-plan-')), 'plan.yaml')
  // Slow refills: timing cannot add a token. /both charges A and B, /a charges A alone.
  writeFileSync(configFile, 'policies:\n  A: { capacity: 10, refillPerSecond: 0.001 }\n  B: { capacity: 5, refillPerSecond: 0.001 }\n' +
    'routes:\n  - { path: /both, policy: [A, B] }\n  - { path: /a, policy: A }\n')
  const env = { DATABASE_URL: db, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix, UPSTREAM_URL: upstream.url, CONSISTENCY: mode, CONFIG_FILE: configFile }
  const [a, b] = await Promise.all([spawnGateway(t, env), spawnGateway(t, env)])
  const paths = [...Array(15).fill('/both'), ...Array(20).fill('/a')] as string[]
  const replies = await Promise.all(paths.map(async (path, i) => ({ path, status: (await send((i % 2 === 0 ? a : b).proxyUrl + path, { user: 'plan' })).status })))
  const allowed = (path: string): number => replies.filter((r) => r.path === path && r.status === 201).length
  t.equal(replies.filter((r) => r.status !== 201 && r.status !== 429).length, 0, 'every answer allowed or refused')
  t.ok(allowed('/both') <= 5, `at most B's 5 on /both (${allowed('/both')})`)
  t.equal(allowed('/both') + allowed('/a'), 10, `A's 10 tokens spent on allowed requests only, across both processes (${allowed('/both')} + ${allowed('/a')})`)
  const more = await Promise.all(Array.from({ length: 6 }, (_, i) => send((i % 2 === 0 ? a : b).proxyUrl + '/both', { user: 'plan' })))
  t.ok(more.every((r) => r.status === 429), 'A is spent: nothing more on /both')
})

t.test('SIGTERM lets in-flight requests finish, then exits 0', async (t) => {
  const db = await createTestDatabase(t)
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, { DATABASE_URL: db, REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url })
  const inFlight = Promise.all([1, 2, 3].map((i) => send(`${gw.proxyUrl}/slow/800?i=${i}`, { user: `slow-${i}` })))
  await waitFor(() => upstream.received.filter((r) => r.url.startsWith('/slow/')).length === 3, { what: 'requests to reach the upstream' })
  const exited = gw.stop('SIGTERM')
  const replies = await inFlight
  t.same(replies.map((r) => r.status), [200, 200, 200], 'every accepted request completed')
  t.equal(await exited, 0, 'exit code 0')
  t.ok(gw.output.some((l) => l.includes('shutdown complete')), 'logs the shutdown')
  await t.rejects(fetch(gw.proxyUrl + '/x', { headers: { 'x-user-id': 'late' } }), 'no longer accepting')
})

t.test('write-behind: SIGTERM writes the pending state to PostgreSQL before the process exits', async (t) => {
  const db = await createTestDatabase(t)
  const upstream = await startUpstream(t)
  // A sync interval of a minute: only the shutdown flush can have written the row.
  const gw = await spawnGateway(t, { DATABASE_URL: db, REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url, CONSISTENCY: 'write-behind', SYNC_INTERVAL_MS: '60000' })
  for (let i = 0; i < 4; i++) t.equal((await send(gw.proxyUrl + '/x', { user: 'flushed' })).status, 201)
  t.equal(await gw.stop('SIGTERM'), 0)
  const sql = postgres(db, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await sql.end() })
  const rows = await sql<Array<{ tokens: number }>>`SELECT tokens FROM rate_limits WHERE policy = 'default' AND user_id = 'flushed'`
  t.equal(rows.length, 1, 'the row was written')
  t.ok(rows[0]!.tokens < 7, `with the four allowances (${rows[0]?.tokens} tokens, plus the refill meanwhile)`)
})

t.test('with no UPSTREAM_URL the built-in echo upstream answers, and says so', async (t) => {
  const gw = await spawnGateway(t, { DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t) })
  t.ok(gw.output.some((l) => l.includes('started the built-in echo upstream')), 'logged')
  const res = await send(gw.proxyUrl + '/anything?x=1', { user: 'first-run', method: 'POST', body: 'hello' })
  t.equal(res.status, 200)
  t.match(res.json(), { method: 'POST', url: '/anything?x=1', bodyBytes: 5, servedBy: /echo/ })
  t.equal(res.headers.get('x-data-source'), 'new-user')
})

t.test('npm run migrate applies pending migrations once', async (t) => {
  const db = await createTestDatabase(t)
  const cli = join(packageRoot(), 'dist', 'src', 'cli', 'migrate.js')
  const env = { PATH: process.env.PATH ?? '', DATABASE_URL: db }
  const first = spawnSync(process.execPath, [cli], { env, encoding: 'utf8', timeout: 20_000 })
  t.equal(first.status, 0)
  t.match(first.stdout, /applied: 001_create_rate_limits, 002_/)
  const second = spawnSync(process.execPath, [cli], { env, encoding: 'utf8', timeout: 20_000 })
  t.equal(second.status, 0)
  t.match(second.stdout, /already up to date/)
})

t.test('npm run scenarios reports the six scenarios and exits 0 against a healthy gateway', async (t) => {
  const db = await createTestDatabase(t)
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, { DATABASE_URL: db, REDIS_KEY_PREFIX: createRedisPrefix(t), UPSTREAM_URL: upstream.url })
  // Asynchronously: the upstream lives in this process and must keep answering.
  const run = await promisify(execFile)(process.execPath, [join(packageRoot(), 'dist', 'scripts', 'scenarios.js')], {
    env: { PATH: process.env.PATH ?? '', TARGET: gw.proxyUrl + '/', SCENARIO_USER: 'cli' }, encoding: 'utf8', timeout: 60_000
  })
  t.match(run.stdout, /TEST 1: CACHE VS DB/)
  t.match(run.stdout, /TEST 6: SLOW DRIP/)
  t.match(run.stdout, /Summary: 10 allowed, 5 blocked/)
  t.match(run.stdout, /All tests done/)
  t.notMatch(run.stdout, /❌ [a-z]/, 'no failed expectation')
})

t.test('start-up failures exit non-zero with a message that says why', async (t) => {
  const env = { PATH: process.env.PATH ?? '', PORT: '0', CONTROL_PORT: '0' }
  const bad = spawnSync(process.execPath, [main], { env: { ...env, RATE_LIMIT_CAPACITY: '-5' }, encoding: 'utf8', timeout: 20_000 })
  t.equal(bad.status, 2, 'bad configuration: exit 2')
  t.match(bad.stderr, /limits\.capacity.*RATE_LIMIT_CAPACITY/, 'names the field and the variable')

  const noDb = spawnSync(process.execPath, [main], { env: { ...env, DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' }, encoding: 'utf8', timeout: 30_000 })
  t.equal(noDb.status, 1, 'PostgreSQL unreachable: exit 1')
  t.match(noDb.stdout, /could not start.*ECONNREFUSED/, 'says what failed')
  t.match(noDb.stdout, /DATABASE_REQUIRED_AT_START=false/, 'and how to start without PostgreSQL')

  // A failure that is not PostgreSQL's is not blamed on it: the proxy's port already taken.
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => taken.close())
  const port = String((taken.address() as AddressInfo).port)
  const busy = spawnSync(process.execPath, [main], { env: { ...env, PORT: port, HOST: '127.0.0.1', DATABASE_URL: await createTestDatabase(t), REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: createRedisPrefix(t) }, encoding: 'utf8', timeout: 30_000 })
  t.equal(busy.status, 1, 'port in use: exit 1')
  t.match(busy.stdout, /could not start.*EADDRINUSE/, 'says what failed')
  t.notMatch(busy.stdout, /PostgreSQL does not answer/, 'and does not blame PostgreSQL')
})

// postgres.js drops the promise of a new connection's first query (src/stores/postgres/connection-faults.ts):
// a connection that dies then rejects it unhandled. The fixture raises such a rejection on SIGWINCH.
for (const [kind, what] of [['connection', 'a lost connection: logged, the gateway serves on'], ['defect', 'anything else: a graceful shutdown, exit 1']] as const) t.test(`a rejection nobody handles, ${what}`, async (t) => {
  const fixture = pathToFileURL(join(packageRoot(), 'test', 'fixtures', 'unhandled-rejection.mjs')).href
  const gw = await spawnGateway(t, { DATABASE_URL: await createTestDatabase(t), REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: createRedisPrefix(t), NODE_OPTIONS: `--import=${fixture}`, REJECT_WITH: kind })
  t.equal((await send(gw.proxyUrl + '/x', { user: 'before' })).status, 200)
  gw.child.kill('SIGWINCH')
  if (kind === 'connection') {
    await waitFor(() => gw.output.some((l) => l.includes('a rejection postgres.js leaves unhandled')), { timeoutMs: 5_000, what: 'the warning' })
    t.equal((await send(gw.proxyUrl + '/x', { user: 'after' })).status, 200, 'still serving')
    t.equal(gw.child.exitCode, null, 'still running')
  } else {
    const [code] = await once(gw.child, 'exit') as [number | null]
    t.equal(code, 1)
    t.ok(gw.output.some((l) => l.includes('shutting down after an error') && l.includes('a defect')), 'logged as the reason for the shutdown')
  }
})

t.test('which rejections are a lost connection', async (t) => {
  const pgError = (code: string): Error => Object.assign(new postgres.PostgresError({ message: code } as never), { code })
  for (const err of [Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }), Object.assign(new Error('closed'), { code: 'CONNECTION_CLOSED' }),
    pgError('57P01'), pgError('57014'), pgError('08006'), pgError('53300')]) t.ok(isConnectionFault(err), (err as Error & { code: string }).code)
  for (const err of [new Error('no code'), Object.assign(new Error('enoent'), { code: 'ENOENT' }), pgError('23505'), pgError('42P01'), 'a string', null]) {
    t.notOk(isConnectionFault(err), String((err as { code?: string } | null)?.code ?? err))
  }
})
