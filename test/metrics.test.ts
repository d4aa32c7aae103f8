// /metrics: exact counter values after a known sequence of requests, a clean exposition
// (promtool check metrics), and the cheap counters/histograms agreeing with prom-client's.
import t from 'tap'
import { Counter, Histogram, Registry } from 'prom-client'
import { Redis } from 'ioredis'
import { FastCounter, FastHistogram } from '../src/observability/fast-metrics.ts'
import { DECISION_BUCKETS } from '../src/observability/metrics.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'
import { parseExposition, promtool } from './helpers/prometheus.ts'

t.test('fast counters and histograms expose exactly what prom-client would', async (t) => {
  const ours = new Registry()
  const theirs = new Registry()
  const c1 = new FastCounter({ name: 'x_events_total', help: 'h', labelNames: ['a', 'b'] as const, registers: [ours] })
  const c2 = new Counter({ name: 'x_events_total', help: 'h', labelNames: ['a', 'b'] as const, registers: [theirs] })
  const h1 = new FastHistogram({ name: 'x_seconds', help: 'h', labelNames: ['s'] as const, buckets: DECISION_BUCKETS, registers: [ours] })
  const h2 = new Histogram({ name: 'x_seconds', help: 'h', labelNames: ['s'] as const, buckets: DECISION_BUCKETS, registers: [theirs] })
  const u1 = new FastHistogram({ name: 'x_bare_seconds', help: 'h', buckets: [0.1, 1], registers: [ours] })
  const u2 = new Histogram({ name: 'x_bare_seconds', help: 'h', buckets: [0.1, 1], registers: [theirs] })
  const values = [0, 0.00005, 0.00007, 0.001, 0.0011, 0.3, 2.5, 7, 1e-9]
  for (const v of values) {
    h1.observe({ s: 'p"q\\r' }, v); h2.observe({ s: 'p"q\\r' }, v)
    h1.labels('b').observe(v); h2.labels('b').observe(v)
    u1.observe(v); u2.observe(v)
  }
  c1.inc({ a: 'x', b: 'y' }); c2.inc({ a: 'x', b: 'y' })
  c1.inc({ b: 'y', a: 'x' }, 2.5); c2.inc({ b: 'y', a: 'x' }, 2.5)
  c1.labels('z', 'w').inc(); c2.labels('z', 'w').inc()
  t.equal(await ours.metrics(), await theirs.metrics())

  t.throws(() => c1.inc({ a: 'x' }), /label b missing/)
  t.throws(() => c1.inc({ a: 'new', b: 'y', c: 'z' } as never), /unknown label c/, 'checked when a label set is first seen')
  t.throws(() => c1.inc({ a: 'x', b: 'y' }, -1), /cannot change by -1/)
  t.throws(() => new FastHistogram({ name: 'bad', help: 'h', buckets: [1, 1] }), /ascending/)
  c1.remove({ a: 'z', b: 'w' })
  t.notMatch(await ours.metrics(), /a="z"/, 'removed')
})

t.test('after a known sequence of requests /metrics shows exactly these counts', async (t) => {
  // A tiny refill rate: nothing refills while the test runs, so every decision is fixed.
  const gw = await startTestGateway(t, { config: { limits: { capacity: 3, refillPerSecond: 0.001 } } })
  const get = async (user: string): Promise<string | null> => {
    const res = await send(gw.proxyUrl + '/m', { user })
    return res.headers.get('x-data-source')
  }
  const sources = [await get('alice'), await get('alice')] // miss → new-user; hit → Postgres decides (redis)
  const redis = new Redis(gw.config.redis.url)
  t.teardown(() => redis.disconnect())
  // The next lookup misses: Postgres decides for a known row. (Alice's last snapshot write
  // first: it may still be waiting to travel with the next read.)
  await gw.redis.settled()
  await redis.del(gw.redis.key(gw.runtime.current.policies.defaultPolicy.cacheName, 'alice'))
  sources.push(await get('alice'), await get('alice'), await get('bob')) // postgres (last token); redis denies; new-user
  t.same(sources, ['new-user', 'redis', 'postgres', 'redis', 'new-user'])
  t.equal((await send(gw.proxyUrl + '/m')).status, 400, 'no caller id')
  t.equal((await send(gw.proxyUrl + '/status/503', { user: 'bob' })).status, 503, 'an upstream 503 passes through')

  await gw.redis.settled() // the last snapshot write, counted below, may still wait for a read
  const text = await (await fetch(gw.controlUrl + '/metrics')).text()
  const series = parseExposition(text)
  const expected: Record<string, number> = {
    'gateway_decisions_total{result="allowed",source="new-user",policy="default",decided_by="postgres"}': 2,
    'gateway_decisions_total{result="allowed",source="redis",policy="default",decided_by="postgres"}': 2, // alice #2, bob #2 (cached snapshot, Postgres decided)
    'gateway_decisions_total{result="allowed",source="postgres",policy="default",decided_by="postgres"}': 1,
    'gateway_decisions_total{result="blocked",source="redis",policy="default",decided_by="redis"}': 1, // alice #4: the snapshot refused, no PostgreSQL round trip
    'gateway_cache_lookups_total{result="hit"}': 3,
    'gateway_cache_lookups_total{result="miss"}': 3,
    'gateway_store_operations_total{store="postgres",operation="decide"}': 5,
    'gateway_store_operations_total{store="postgres",operation="ping"}': 1, // start-up check
    'gateway_store_operations_total{store="redis",operation="get"}': 6,
    'gateway_store_operations_total{store="redis",operation="set"}': 5,
    // Start-up: Redis's marker absent (a new key prefix), the re-seed claims it, reads one page
    // (nothing spent yet) and sets it; finished before the gateway listens.
    'gateway_store_operations_total{store="redis",operation="reseed"}': 2,
    'gateway_store_operations_total{store="postgres",operation="reseed"}': 1,
    'gateway_redis_reseeds_total{result="done"}': 1,
    'gateway_proxied_responses_total{status_class="2xx"}': 4,
    'gateway_proxied_responses_total{status_class="5xx"}': 1,
    'gateway_rejected_requests_total{reason="missing"}': 1
  }
  // Every gateway counter: the expected value, and zero for every other pre-created series.
  const counters = [...series.entries()].filter(([name]) => /^gateway_\w+_total\{/.test(name))
  t.ok(counters.length >= 40, `${counters.length} counter series exported (created at zero up front)`)
  for (const [name, value] of counters) t.equal(value, expected[name] ?? 0, name)
  for (const name of Object.keys(expected)) t.ok(series.has(name), `${name} exported`)

  const count = (name: string): number | undefined => series.get(name)
  t.equal(count('gateway_decision_duration_seconds_count{source="new-user",decided_by="postgres"}'), 2)
  t.equal(count('gateway_decision_duration_seconds_count{source="redis",decided_by="postgres"}'), 2, 'cache hits PostgreSQL decided')
  t.equal(count('gateway_decision_duration_seconds_count{source="redis",decided_by="redis"}'), 1, 'a refusal read from the snapshot, timed apart')
  t.equal(count('gateway_decision_duration_seconds_count{source="postgres",decided_by="postgres"}'), 1)
  t.equal(count('gateway_decision_duration_seconds_count{source="fail-open",decided_by="gateway"}'), 0, 'pre-created')
  t.equal(count('gateway_upstream_duration_seconds_count'), 5, 'one per forwarded request')
  t.equal(count('gateway_postgres_batch_size_count'), 5)
  t.equal(count('gateway_postgres_batch_size_sum'), 5, 'sequential requests: batches of one')
  t.equal(count('gateway_store_up{store="postgres"}'), 1)
  t.equal(count('gateway_store_up{store="redis"}'), 1)
  t.match(text, /^gateway_build_info\{version="\d+\.\d+\.\d+[^"]*"\} 1$/m)
  t.match(text, /^process_resident_memory_bytes \d+/m, 'process default metrics')
  t.match(text, /^nodejs_eventloop_lag_seconds /m)
})

t.test('the exposition passes promtool check metrics', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 1 } } })
  for (let i = 0; i < 3; i++) await send(gw.proxyUrl + '/p', { user: 'lint' })
  const text = await (await fetch(gw.controlUrl + '/metrics')).text()
  const { status, output } = promtool(['check', 'metrics'], text)
  t.equal(status, 0, 'promtool exit status')
  t.equal(output.trim(), '', 'no lint findings')
})

t.test('with Redis disabled there is no Redis up series to alert on', async (t) => {
  const gw = await startTestGateway(t, { config: { redis: { enabled: false } } })
  await send(gw.proxyUrl + '/p', { user: 'noredis' })
  const series = parseExposition(await (await fetch(gw.controlUrl + '/metrics')).text())
  t.notOk(series.has('gateway_store_up{store="redis"}'))
  t.equal(series.get('gateway_store_up{store="postgres"}'), 1)
  t.equal(series.get('gateway_cache_lookups_total{result="skipped"}'), 1)
})
