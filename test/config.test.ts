// Configuration: defaults, file + environment layering, and errors that name the field.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config/load.ts'

function tempFile (name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'gwcfg-'))
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

t.test('defaults match the original', async (t) => {
  const c = loadConfig({ env: {} })
  t.equal(c.proxy.port, 8080)
  t.equal(c.control.port, 9090)
  t.equal(c.control.host, '127.0.0.1', 'control port is local-only by default')
  t.equal(c.identity.header, 'x-user-id')
  t.same(c.limits, { capacity: 10, refillPerSecond: 1, cost: 1, consistency: 'strict', syncIntervalMs: 100, writeBehindKeyTtlSeconds: 3600 })
  t.equal(c.postgres.url, 'postgres://postgres@127.0.0.1:5432/postgres')
  t.equal(c.redis.url, 'redis://127.0.0.1:6379')
  t.equal(c.proxy.upstreamUrl, undefined)
  t.same(loadConfig({ env: {}, skipDefaultFile: true }), c, 'config/default.yaml says the same as the built-in defaults')
})

t.test('environment overrides the file; CONFIG_FILE overrides the defaults', async (t) => {
  const file = tempFile('gw.yaml', 'limits:\n  capacity: 50\nidentity:\n  header: X-Api-Key\n')
  const c = loadConfig({
    env: {
      CONFIG_FILE: file,
      RATE_LIMIT_REFILL_PER_SECOND: '2.5',
      PORT: '18080',
      UPSTREAM_URL: 'https://api.example.test/base',
      DATABASE_URL: 'postgres://u@db:5432/x',
      REDIS_URL: 'redis://cache:6380',
      LOG_LEVEL: 'debug',
      REDIS_ENABLED: 'false'
    }
  })
  t.equal(c.limits.capacity, 50, 'from CONFIG_FILE')
  t.equal(c.limits.refillPerSecond, 2.5, 'from the environment')
  t.equal(c.identity.header, 'x-api-key', 'header names are case-insensitive')
  t.equal(c.proxy.port, 18080)
  t.equal(c.proxy.upstreamUrl, 'https://api.example.test/base')
  t.equal(c.log.level, 'debug')
  t.equal(c.redis.enabled, false)
  const env = loadConfig({ env: { CONFIG_FILE: file, RATE_LIMIT_CAPACITY: '7' } })
  t.equal(env.limits.capacity, 7, 'environment wins over CONFIG_FILE')
})

t.test('consistency: strict by default, write-behind from CONSISTENCY, a policy may set its own', async (t) => {
  const file = tempFile('cons.yaml', 'policies:\n  daily: { capacity: 1000, refillPerSecond: 0.01, consistency: strict }\n  burst: { capacity: 5 }\n')
  const c = loadConfig({ env: { CONFIG_FILE: file, CONSISTENCY: 'write-behind', SYNC_INTERVAL_MS: '250', WRITE_BEHIND_KEY_TTL_SECONDS: '900' } })
  t.equal(c.limits.consistency, 'write-behind')
  t.equal(c.limits.syncIntervalMs, 250)
  t.equal(c.limits.writeBehindKeyTtlSeconds, 900)
  t.equal(loadConfig({ env: {} }).limits.writeBehindKeyTtlSeconds, 3600, 'an hour by default')
  t.equal(c.policies.daily!.consistency, 'strict', 'the policy\'s own')
  t.equal(c.policies.burst!.consistency, undefined, 'unset: limits.consistency applies (policy-set.ts)')
})

t.test('a route may charge write-behind and strict policies together (a burst in Redis, a daily quota in PostgreSQL)', async (t) => {
  const file = tempFile('mixed.yaml', 'policies:\n  burst: { consistency: write-behind }\n  daily: {}\nroutes:\n  - { path: /x, policy: [burst, daily] }\n')
  t.same(loadConfig({ env: { CONFIG_FILE: file } }).routes[0]!.policy, ['burst', 'daily'])
})

t.test('bad configuration names the field', async (t) => {
  const cases: Array<[string, NodeJS.ProcessEnv, RegExp]> = [
    ['negative capacity', { RATE_LIMIT_CAPACITY: '-1' }, /limits\.capacity: .*(from RATE_LIMIT_CAPACITY)/],
    ['zero rate', { RATE_LIMIT_REFILL_PER_SECOND: '0' }, /limits\.refillPerSecond/],
    ['not a number', { RATE_LIMIT_CAPACITY: 'ten' }, /RATE_LIMIT_CAPACITY=ten: must be a number/],
    ['port out of range', { PORT: '70000' }, /proxy\.port/],
    ['bad upstream URL', { UPSTREAM_URL: 'not a url' }, /proxy\.upstreamUrl: must be a URL/],
    ['wrong scheme', { DATABASE_URL: 'mysql://x' }, /postgres\.url/],
    ['bad Redis URL', { REDIS_URL: 'http://x' }, /redis\.url/],
    ['bad log level', { LOG_LEVEL: 'loud' }, /log\.level/],
    ['bad header name', { USER_ID_HEADER: 'x user' }, /identity\.header/],
    ['bad boolean', { REDIS_ENABLED: 'maybe' }, /REDIS_ENABLED=maybe/],
    ['cost above capacity', { RATE_LIMIT_CAPACITY: '2', RATE_LIMIT_COST: '3' }, /limits\.cost/],
    ['unknown field', { CONFIG_FILE: tempFile('u.yaml', 'limits:\n  capacty: 5\n') }, /limits\.capacty/],
    ['unknown section', { CONFIG_FILE: tempFile('s.yaml', 'limitz: {}\n') }, /limitz/],
    ['missing file', { CONFIG_FILE: '/nonexistent/gw.yaml' }, /\/nonexistent\/gw\.yaml/],
    ['invalid YAML', { CONFIG_FILE: tempFile('bad.yaml', 'limits: [\n') }, /not valid YAML/],
    ['bad consistency', { CONSISTENCY: 'eventual' }, /limits\.consistency: .*(from CONSISTENCY)/],
    ['zero sync interval', { SYNC_INTERVAL_MS: '0' }, /limits\.syncIntervalMs/],
    ['zero write-behind key TTL', { WRITE_BEHIND_KEY_TTL_SECONDS: '0' }, /limits\.writeBehindKeyTtlSeconds/],
    ['fractional sync interval', { SYNC_INTERVAL_MS: '2.5' }, /SYNC_INTERVAL_MS/],
    ['bad policy consistency', { CONFIG_FILE: tempFile('pc.yaml', 'policies:\n  burst: { consistency: lazy }\n') }, /policies\.burst\.consistency/]
  ]
  for (const [name, env, pattern] of cases) {
    t.throws(() => loadConfig({ env }), pattern, name)
    t.throws(() => loadConfig({ env }), ConfigError, `${name}: a ConfigError`)
  }
})
