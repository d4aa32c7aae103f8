// The original runner's six scenarios, through a real gateway to a real upstream, with real
// PostgreSQL and Redis; plus the stricter concurrency checks of issue 2. In both consistency
// modes: strict (PostgreSQL decides) and write-behind (Redis decides, PostgreSQL behind).
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { packageRoot } from '../src/core/package.ts'
import { freePort } from './helpers/private-stores.ts'
import { SCENARIOS, concurrent } from '../scripts/scenarios-lib.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { burst } from './helpers/http.ts'

const MODES = ['strict', 'write-behind'] as const

for (const mode of MODES) t.test(`the six original scenarios (${mode})`, async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { consistency: mode } } })
  for (const [id, scenario] of SCENARIOS) {
    const result = await scenario(gw.proxyUrl + '/', `user_123-${id}`)
    for (const e of result.expectations) t.ok(e.ok, `${id}: ${e.what} (expected ${e.expected}, got ${e.actual})`)
    if (id === 'burst') {
      const refused = result.outcomes.filter((o) => o.status === 429)
      t.ok(refused.length > 0 && refused.every((o) => o.source === 'redis'), 'burst: refusals come from Redis, no Postgres round trip')
      t.ok(refused.every((o) => o.retryAfter === '1'), 'burst: Retry-After is 1 s')
    }
  }
})

for (const mode of MODES) t.test(`40 concurrent requests on a fresh key give exactly 10 allowed (${mode})`, async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { consistency: mode } } })
  for (const user of ['fresh-a', 'fresh-b', 'fresh-c']) {
    const replies = await burst(gw.proxyUrl + '/x', user, 40)
    t.equal(replies.filter((r) => r.status === 200 || r.status === 201).length, 10, `${user}: 10 allowed`)
    t.equal(replies.filter((r) => r.status === 429).length, 30, `${user}: 30 blocked`)
  }
  const result = await concurrent(gw.proxyUrl + '/', 'seed-concurrent')
  t.ok(result.expectations.every((e) => e.ok), 'seed: 10 goroutines all allowed')
})

for (const mode of MODES) t.test(`Redis pointed at a port where nothing listens: Postgres answers every request (${mode})`, async (t) => {
  const gw = await startTestGateway(t, { redisUrl: 'redis://127.0.0.1:1', config: { limits: { consistency: mode } } })
  const sources: string[] = []
  const statuses: number[] = []
  for (let i = 0; i < 15; i++) {
    const res = await fetch(gw.proxyUrl + '/p', { headers: { 'x-user-id': 'no-redis' } })
    await res.arrayBuffer()
    statuses.push(res.status)
    sources.push(res.headers.get('x-data-source') ?? '')
  }
  t.same(statuses, [...Array(10).fill(201), ...Array(5).fill(429)], '10 allowed then 5 blocked')
  t.same(sources, ['new-user', ...Array(14).fill('postgres')], 'decided by Postgres')
  const outages = gw.logs.filter((l) => l.msg === 'Redis unavailable')
  t.equal(outages.length, 1, 'the outage is logged once, not per request')
})

t.test('npm run scenarios against an unreachable target: the cause, once', async (t) => {
  const target = `http://127.0.0.1:${await freePort()}/` // nothing listens there
  const run = spawnSync(process.execPath, [join(packageRoot(), 'dist', 'scripts', 'scenarios.js')], {
    env: { PATH: process.env.PATH ?? '', TARGET: target }, encoding: 'utf8', timeout: 30_000
  })
  t.equal(run.status, 1)
  t.equal(run.stdout.match(/ECONNREFUSED/g)?.length, 1, 'ECONNREFUSED said once: ' + run.stdout)
  t.ok(run.stdout.includes(`Cannot reach ${target}: `), 'names the target')
  t.notMatch(run.stdout, /TEST 1/, 'no scenario is attempted')
})
