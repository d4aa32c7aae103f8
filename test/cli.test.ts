// The command line, run as a user runs it: the bin file itself (shebang, executable), npm start.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { packageRoot } from '../src/core/package.ts'
import { createTestDatabase } from './helpers/stores.ts'
import { waitFor } from './helpers/http.ts'

const root = packageRoot()
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string, bin: Record<string, string> }
const bin = join(root, pkg.bin['ratelimit-gateway']!)
const baseEnv = { PATH: process.env.PATH ?? '', PORT: '0', CONTROL_PORT: '0', HOST: '127.0.0.1' }
const run = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(bin, args, { env: { ...baseEnv, ...env }, encoding: 'utf8', timeout: 30_000, cwd: root })

t.test('--help and --version answer and exit without starting anything', async (t) => {
  const help = run(['--help'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' })
  t.equal(help.status, 0)
  t.match(help.stdout, /^Usage: ratelimit-gateway/)
  for (const word of ['check-config', 'print-config', 'migrate', 'start']) t.match(help.stdout, word)
  t.notMatch(help.stdout, /Starting server/)
  t.equal(run(['-h']).status, 0)
  const version = run(['--version'])
  t.equal(version.stdout, pkg.version + '\n')
  const bad = run(['--frobnicate'])
  t.equal(bad.status, 2)
  t.match(bad.stderr, /Unknown option '--frobnicate'/)
  t.equal(run(['launch']).status, 2, 'an unknown command')
})

t.test('check-config: 0 when valid, 2 naming every bad field and its variable', async (t) => {
  const ok = run(['check-config', 'config/examples/policies.yaml'])
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stdout, /configuration is valid .*policies\.yaml/)
  const file = join(t.testdirName, 'bad.yaml')
  t.testdir({})
  writeFileSync(file, 'limits:\n  capacity: -1\nproxy:\n  port: eighty\n')
  const bad = run(['check-config', file], { PORT: '', FAIL_MODE: 'sideways', RATE_LIMIT_COST: 'abc' })
  t.equal(bad.status, 2)
  for (const field of [/limits\.capacity/, /proxy\.port/, /fallback\.mode.*\(from FAIL_MODE\)/, /RATE_LIMIT_COST=abc: must be a number/]) t.match(bad.stderr, field)
  t.match(run(['check-config', join(t.testdirName, 'missing.yaml')]).stderr, /missing\.yaml/)
})

t.test('print-config: the effective values, where each came from, secrets redacted', async (t) => {
  const file = join(t.testdirName, 'gw.yaml')
  t.testdir({})
  writeFileSync(file, 'limits:\n  capacity: 42\nupstreams:\n  - { prefix: /a, url: "http://user:upw@127.0.0.1:9/x" }\n')
  const env = {
    ADMIN_TOKEN: 'a-very-secret-admin-token', JWT_SECRET: 'j'.repeat(40), DATABASE_URL: 'postgres://app:dbpassword@db.internal:5432/rl',
    REDIS_URL: 'redis://:redispassword@cache:6379', RATE_LIMIT_REFILL_PER_SECOND: '3'
  }
  const out = run(['print-config', file], env)
  t.equal(out.status, 0, out.stderr)
  t.match(out.stdout, /limits\.capacity = 42 {2}# file .*gw\.yaml/)
  t.match(out.stdout, /limits\.refillPerSecond = 3 {2}# env RATE_LIMIT_REFILL_PER_SECOND/)
  t.match(out.stdout, /limits\.cost = 1 {2}# default/)
  t.match(out.stdout, /control\.adminToken = "\[redacted\]" {2}# env ADMIN_TOKEN/)
  t.match(out.stdout, /identity\.jwt\.secret = "\[redacted\]"/)
  t.match(out.stdout, /postgres\.url = "postgres:\/\/app:\[redacted\]@db\.internal:5432\/rl"/)
  for (const secret of ['a-very-secret-admin-token', 'j'.repeat(40), 'dbpassword', 'redispassword', 'upw']) t.notMatch(out.stdout, secret, `${secret.slice(0, 8)}… is not shown`)
  const json = JSON.parse(run(['print-config', '--json', file], env).stdout) as { config: { limits: { capacity: number } }, sources: Record<string, string> }
  t.equal(json.config.limits.capacity, 42)
  t.equal(json.sources['postgres.url'], 'env DATABASE_URL')
})

t.test('migrate applies the migrations and exits', async (t) => {
  const db = await createTestDatabase(t)
  const first = run(['migrate'], { DATABASE_URL: db })
  t.equal(first.status, 0, first.stderr)
  t.match(first.stdout, /^applied: /)
  t.equal(run(['migrate'], { DATABASE_URL: db }).stdout, 'already up to date\n')
})

/** Resolves once `port` refuses connections (the process that held it is gone). */
const portClosed = async (port: number): Promise<boolean> => await new Promise((resolve) => {
  const s = connect(port, '127.0.0.1')
  s.once('connect', () => { s.destroy(); resolve(false) })
  s.once('error', () => resolve(true))
})

for (const [name, command, args] of [
  ['the bin', bin, []],
  ['npm start', 'npm', ['start', '--ignore-scripts', '--silent']]
] as const) {
  t.test(`${name}: SIGTERM to its PID stops the gateway and frees its port`, async (t) => {
    const db = await createTestDatabase(t)
    const child = spawn(command, [...args], { cwd: root, env: { ...baseEnv, DATABASE_URL: db, REDIS_ENABLED: 'false', npm_config_update_notifier: 'false' }, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    const lines: string[] = []
    child.stderr.on('data', (c: Buffer) => lines.push(c.toString()))
    const started = await new Promise<{ port: number, control_port: number }>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (line) => {
        lines.push(line)
        if (line.includes('Starting server on')) resolve(JSON.parse(line) as { port: number, control_port: number })
      })
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${lines.join('\n')}`)))
    })
    const summary = lines.map((l) => { try { return JSON.parse(l) as Record<string, unknown> } catch { return {} } }).find((l) => String(l.msg).includes('starting'))
    t.match(summary, { version: pkg.version, fail_mode: 'local', redis: 'disabled', upstream: 'built-in echo upstream' }, 'the start-up line says what runs')
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    t.equal(await exited, 0, `${name} exits 0`)
    await waitFor(async () => await portClosed(started.port) && await portClosed(started.control_port), { timeoutMs: 10_000, what: 'the ports to be freed' })
    t.pass('no gateway left holding the ports')
  })
}
