// A write-behind gateway on the in-memory twins (src/stores/memory) with a controlled clock:
// the Limiter, its flusher, and the two stores, for the fast tests of the decision flow.
import type { Config } from '../../src/config/schema.ts'
import { Limiter } from '../../src/limiter/limiter.ts'
import { WriteBehindSync } from '../../src/limiter/write-behind.ts'
import { createLogger } from '../../src/observability/log.ts'
import { Metrics } from '../../src/observability/metrics.ts'
import { MemoryPostgres, MemoryRedis } from '../../src/stores/memory/index.ts'

export const TWIN_FALLBACK: Config['fallback'] = {
  redisDecides: true, redisTimeoutMs: 500, mode: 'closed', localReplicas: 1, localMaxKeys: 1000, probeIntervalMs: 10, closedRetryAfterSeconds: 1
}

export interface WriteBehindTwins { clock: { now: number }, pg: MemoryPostgres, redis: MemoryRedis, sync: WriteBehindSync, limiter: Limiter }

export function writeBehindTwins (): WriteBehindTwins {
  const clock = { now: 1_000_000 }
  const log = createLogger('silent')
  const pg = new MemoryPostgres({ now: () => clock.now })
  const redis = new MemoryRedis({ now: () => clock.now })
  const metrics = new Metrics()
  const sync = new WriteBehindSync({ ledger: pg.ledger, intervalMs: () => 100, metrics, log, now: () => clock.now })
  const limiter = new Limiter({ store: pg, cache: redis.cache, redis: redis.decider, writeBehind: { redis: redis.writeBehind, ledger: pg.ledger, sync } },
    { fallback: TWIN_FALLBACK, metrics, log, now: () => clock.now })
  return { clock, pg, redis, sync, limiter }
}
