// The Redis lease store (concurrency slots) against the shared Redis, a key prefix of its own:
// a renewal that fails once (a timeout in a busy moment) is tried again at once, so a live
// lease does not lapse; a lease renewed keeps its slot past its first expiry.
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import t from 'tap'
import { Metrics } from '../src/observability/metrics.ts'
import { defineScripts } from '../src/stores/redis/scripts.ts'
import { leaseKey, RedisLeases } from '../src/stores/redis/leases.ts'
import { TEST_REDIS_URL } from './helpers/stores.ts'

t.test('a renewal that fails is tried again at once: the lease is extended, the failure counted', async (t) => {
  const client = defineScripts(new Redis(TEST_REDIS_URL))
  const prefix = `leases-${randomBytes(4).toString('hex')}:`
  t.teardown(async () => {
    const keys = await client.keys(prefix + '*')
    if (keys.length > 0) await client.del(...keys)
    client.disconnect()
  })
  await new Promise<void>((resolve) => { client.once('ready', () => { resolve() }) })
  const metrics = new Metrics()
  const leases = new RedisLeases(client, prefix, metrics)
  t.same(await leases.acquire('p', 'u', 1, 'lease-1', 1000), { kind: 'acquired', inFlight: 1 })
  const key = leaseKey(prefix, 'p', 'u')
  const before = Number(await client.zscore(key, 'lease-1'))
  // The first renewal call times out, as the request path's 50 ms client does on a slow turn.
  const real = (client as unknown as { rlLeaseRenew: (...a: unknown[]) => Promise<number> }).rlLeaseRenew.bind(client)
  let calls = 0
  ;(client as unknown as { rlLeaseRenew: (...a: unknown[]) => Promise<number> }).rlLeaseRenew = async (...args: unknown[]) => {
    calls++
    if (calls === 1) throw new Error('Command timed out')
    return await real(...args)
  }
  await leases.renew([{ policy: 'p', userId: 'u', leaseId: 'lease-1' }], 60_000)
  t.equal(calls, 2, 'tried again after the failure')
  const after = Number(await client.zscore(key, 'lease-1'))
  t.ok(after - before > 50_000, `the lease now ends a minute on, not at its first expiry (${after - before} ms later)`)
  const errors = (await metrics.registry.getSingleMetric('gateway_store_errors_total')!.get()).values
    .find((v) => v.labels.store === 'redis' && v.labels.operation === 'lease')
  t.equal(errors?.value, 1, 'the failed attempt is counted')
})
