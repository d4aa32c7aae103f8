// Three gateway processes sharing one PostgreSQL database and one Redis key prefix: the safety
// invariant holds across processes, for a burst and for a sustained overload, in both
// consistency modes (CONSISTENCY: strict, PostgreSQL decides; write-behind, Redis decides).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { spawnGateway, type SpawnedGateway } from './helpers/gateway.ts'
import { send, until } from './helpers/http.ts'
import { createRedisPrefix, createTestDatabase, TEST_REDIS_URL } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

const CAPACITY = 10
const RATE = 5
// The issue asks for a 20 s run; MULTI_PROCESS_RUN_SECONDS shortens it for quick local loops.
const RUN_SECONDS = Number(process.env.MULTI_PROCESS_RUN_SECONDS ?? 20)

for (const mode of ['strict', 'write-behind'] as const) t.test(`three gateway processes sharing the stores (${mode})`, async (t) => {
  const db = await createTestDatabase(t)
  const prefix = createRedisPrefix(t)
  const upstream = await startUpstream(t)
  // /burst has its own policy with a negligible refill, so the burst's outcome does not depend
  // on how long the machine takes to serve it; everything else uses the default policy.
  const dir = mkdtempSync(join(tmpdir(), 'gw-mp-'))
  const configFile = join(dir, 'policies.yaml')
  writeFileSync(configFile, `policies:\n  burst: { capacity: ${CAPACITY}, refillPerSecond: 0.001 }\nroutes:\n  - { path: /burst, policy: burst }\n`)
  const env = {
    CONFIG_FILE: configFile,
    DATABASE_URL: db,
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    UPSTREAM_URL: upstream.url,
    RATE_LIMIT_CAPACITY: String(CAPACITY),
    RATE_LIMIT_REFILL_PER_SECOND: String(RATE),
    CONSISTENCY: mode
  }
  const gateways: SpawnedGateway[] = await Promise.all([0, 1, 2].map(() => spawnGateway(t, env)))

  await t.test('150 concurrent requests for one fresh key: exactly the capacity allowed', async (t) => {
    const replies = await Promise.all(Array.from({ length: 150 }, (_, i) => send(gateways[i % 3]!.proxyUrl + '/burst', { user: 'burst' })))
    t.equal(replies.filter((r) => r.status === 201).length, CAPACITY, `exactly ${CAPACITY} allowed`)
    t.equal(replies.filter((r) => r.status === 429).length, 150 - CAPACITY, 'the rest blocked')
  })

  await t.test(`a ${RUN_SECONDS} s run at four times the rate: at most capacity + rate x duration`, async (t) => {
    const everyMs = 1000 / (4 * RATE)
    const statuses: number[] = []
    // Who decided each allowance (X-Data-Source), so a failure says which path over-admitted.
    const sources = new Map<string, number>()
    const inFlight: Array<Promise<void>> = []
    const first = performance.now()
    for (let i = 0; performance.now() < first + RUN_SECONDS * 1000; i++) {
      await until(first + i * everyMs)
      inFlight.push(send(gateways[i % 3]!.proxyUrl + '/x', { user: 'sustained' }).then((r) => {
        statuses.push(r.status)
        if (r.status === 201) {
          const source = r.headers.get('x-data-source') ?? 'none'
          sources.set(source, (sources.get(source) ?? 0) + 1)
        }
      }, () => { statuses.push(-1) }))
    }
    await Promise.all(inFlight)
    // Every decision happened between the first request leaving and the last answer arriving.
    const seconds = (performance.now() - first) / 1000
    const allowed = statuses.filter((s) => s === 201).length
    const bound = CAPACITY + RATE * seconds
    t.comment(`${statuses.length} requests in ${seconds.toFixed(2)} s: ${allowed} allowed (${[...sources].map(([s, n]) => `${s} ${n}`).join(', ')}), bound ${bound.toFixed(1)}`)
    t.same(statuses.filter((s) => s !== 201 && s !== 429), [], 'every request answered 201 or 429')
    if (!t.ok(allowed <= bound, `allowed ${allowed} <= capacity + rate x duration = ${bound.toFixed(1)}`)) {
      // What the gateways warned about (an outage, a deadline, a fail mode) is the likely path.
      gateways.forEach((g, i) => t.comment(`gateway ${i}:\n` + g.output.filter((line) => !line.startsWith('{"level":30')).join('\n')))
    }
    // And the limit is not met by refusing callers it should admit: close to the bound.
    t.ok(allowed >= CAPACITY + RATE * RUN_SECONDS * 0.9, `allowed ${allowed} is close to the bound`)
  })
})
