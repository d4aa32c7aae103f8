// Group commit changes no outcome: the core exactness checks with batching forced by a long
// window (20 ms), so concurrent decisions, several for one key among them, share a round trip.
import t from 'tap'
import { SCENARIOS } from '../scripts/scenarios-lib.ts'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { burst } from './helpers/http.ts'

const forced = { postgres: { batchWindowMs: 20 } }

/** Decisions and round trips PostgreSQL has seen so far (the batch-size histogram). */
async function batches (gw: TestGateway): Promise<{ decisions: number, roundTrips: number }> {
  const { values } = await gw.metrics.postgresBatchSize.get()
  return {
    decisions: values.find((v) => v.metricName === 'gateway_postgres_batch_size_sum')?.value ?? 0,
    roundTrips: values.find((v) => v.metricName === 'gateway_postgres_batch_size_count')?.value ?? 0
  }
}

const allowed = (statuses: number[]): number => statuses.filter((s) => s === 201).length

t.test('40 concurrent requests on one fresh key: exactly 10 allowed, the key several times per batch', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  for (const user of ['one-a', 'one-b']) {
    const before = await batches(gw)
    const statuses = (await burst(gw.proxyUrl + '/x', user, 40)).map((r) => r.status)
    t.equal(allowed(statuses), 10, `${user}: 10 allowed`)
    t.equal(statuses.filter((s) => s === 429).length, 30, `${user}: 30 refused`)
    const after = await batches(gw)
    const decisions = after.decisions - before.decisions
    const roundTrips = after.roundTrips - before.roundTrips
    t.ok(decisions >= 10 && roundTrips < decisions / 2, `${user}: ${decisions} PostgreSQL decisions shared ${roundTrips} round trips`)
  }
})

t.test('several requests for one key inside one batch are charged in arrival order', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  const before = await batches(gw)
  const res = await fetch(gw.controlUrl + '/v1/check', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ checks: [{ key: 'mixed', cost: 6 }, { key: 'other', cost: 9 }, { key: 'mixed', cost: 6 }, { key: 'mixed', cost: 3 }, { key: 'mixed', cost: 1 }, { key: 'mixed', cost: 1 }] })
  })
  const { results } = await res.json() as { results: Array<{ allowed: boolean, remaining: number }> }
  const after = await batches(gw)
  t.equal(after.roundTrips - before.roundTrips, 1, 'all six decisions went to PostgreSQL in one round trip')
  t.same(results.map((r) => r.allowed), [true, true, false, true, true, false], '6 of 10, not 6 more, 3, 1, then nothing left')
  t.same(results.map((r) => r.remaining), [4, 1, 4, 1, 0, 0])
})

t.test('two gateways sharing the stores, both batching: 40 concurrent requests, exactly 10 allowed in total', async (t) => {
  const a = await startTestGateway(t, { config: forced })
  const b = await startTestGateway(t, { config: forced, databaseUrl: a.databaseUrl, redisPrefix: a.redisPrefix, upstreamUrl: a.upstream!.url })
  const replies = await Promise.all([burst(a.proxyUrl + '/s', 'shared', 20), burst(b.proxyUrl + '/s', 'shared', 20)])
  t.equal(allowed(replies.flat().map((r) => r.status)), 10)
})

t.test('the six original scenarios give their expected results with batching forced', async (t) => {
  const gw = await startTestGateway(t, { config: forced })
  const runs = await Promise.all(SCENARIOS.map(async ([id, scenario]) => [id, await scenario(gw.proxyUrl + '/', `batched-${id}`)] as const))
  for (const [id, result] of runs) {
    for (const e of result.expectations) t.ok(e.ok, `${id}: ${e.what} (expected ${e.expected}, got ${e.actual})`)
  }
})
