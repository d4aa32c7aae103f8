/**
 * The benchmark's comparison servers, each its own process: the same Fastify +
 * @fastify/http-proxy setup as the gateway (undici pool of 128, pipelining 1, no retries), with
 *   PEER_LIMITER=none      no limiter at all: the floor of this stack (case 2);
 *   PEER_LIMITER=redis     rate-limiter-flexible's RateLimiterRedis (case 7);
 *   PEER_LIMITER=postgres  rate-limiter-flexible's RateLimiterPostgres on node-postgres (case 7).
 * PEER_PLAN (redis only), "capacity/refill,capacity/refill,...": one RateLimiterRedis per limit,
 * consumed together by a RateLimiterUnion (the library's way to a plan of several limits; not
 * atomic: each limit is its own call, and a refusal by one still charges the others).
 * The peer gets the gateway's capacity as points per window of capacity/refill seconds
 * (rate-limiter-flexible counts fixed windows; it has no token bucket), the same caller header,
 * and answers 429 with Retry-After, as the gateway does.
 */
import httpProxy from '@fastify/http-proxy'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import pg from 'pg'
import { RateLimiterPostgres, RateLimiterRedis, RateLimiterRes, RateLimiterUnion, type RateLimiterAbstract } from 'rate-limiter-flexible'
import type { AddressInfo } from 'node:net'

const env = process.env
const mode = env.PEER_LIMITER ?? 'none'
const capacity = Number(env.RATE_LIMIT_CAPACITY ?? 10)
const refill = Number(env.RATE_LIMIT_REFILL_PER_SECOND ?? 1)
const header = env.USER_ID_HEADER ?? 'x-user-id'
const duration = Math.max(1, Math.ceil(capacity / refill))

/** What the proxy asks: consume one point, or reject with the longest wait. */
interface Consumer { consume: (key: string) => Promise<RateLimiterRes> }

/** A plan's limits as one consumer: resolves with the fewest points left, rejects with the longest wait. */
function union (limiters: RateLimiterRedis[]): Consumer {
  const all = new RateLimiterUnion(...limiters)
  const fewest = (results: Record<string, RateLimiterRes>, pick: (a: RateLimiterRes, b: RateLimiterRes) => boolean): RateLimiterRes =>
    Object.values(results).reduce((a, b) => pick(a, b) ? a : b)
  return {
    consume: async (key) => {
      try {
        return fewest(await all.consume(key, 1) as Record<string, RateLimiterRes>, (a, b) => a.remainingPoints <= b.remainingPoints)
      } catch (rejected) {
        if (rejected instanceof Error) throw rejected
        throw fewest(rejected as Record<string, RateLimiterRes>, (a, b) => a.msBeforeNext >= b.msBeforeNext)
      }
    }
  }
}

async function makeLimiter (): Promise<{ limiter: Consumer | null, close: () => Promise<void> }> {
  if (mode === 'none') return { limiter: null, close: async () => {} }
  if (mode === 'redis') {
    // The same client options as the gateway's cache: auto-pipelining, fail fast.
    const client = new Redis(env.REDIS_URL ?? 'redis://127.0.0.1:6379', { enableAutoPipelining: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, lazyConnect: true })
    await client.connect()
    const prefix = env.REDIS_KEY_PREFIX ?? 'rlflx'
    if (env.PEER_PLAN !== undefined) {
      const limits = env.PEER_PLAN.split(',').map((l, i) => {
        const [c, r] = l.split('/').map(Number) as [number, number]
        return new RateLimiterRedis({ storeClient: client, keyPrefix: `${prefix}${i}`, points: c, duration: Math.max(1, Math.ceil(c / r)) })
      })
      return { limiter: union(limits), close: async () => { await client.quit() } }
    }
    const limiter: RateLimiterAbstract = new RateLimiterRedis({ storeClient: client, keyPrefix: prefix, points: capacity, duration })
    return { limiter: { consume: async (key) => await limiter.consume(key, 1) }, close: async () => { await client.quit() } }
  }
  if (mode === 'postgres') {
    // The gateway's pool size (10 by default).
    const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: Number(env.DATABASE_POOL_SIZE ?? 10) })
    const limiter = await new Promise<RateLimiterPostgres>((resolve, reject) => {
      const l: RateLimiterPostgres = new RateLimiterPostgres({ storeClient: pool, storeType: 'pool', tableName: 'rlflx_bench', points: capacity, duration, clearExpiredByTimeout: false },
        (err?: Error) => err ? reject(err) : resolve(l))
    })
    return { limiter: { consume: async (key) => await limiter.consume(key, 1) }, close: async () => { await pool.end() } }
  }
  throw new Error(`PEER_LIMITER=${mode}: expected none, redis or postgres`)
}

const { limiter, close } = await makeLimiter()
const app = Fastify({ logger: false })
if (limiter !== null) {
  app.addHook('onRequest', async (request, reply) => {
    const id = request.headers[header]
    if (typeof id !== 'string' || id === '') {
      reply.code(400).send({ title: 'Bad Request', detail: `${header} is required` })
      return reply
    }
    try {
      const res = await limiter.consume(id)
      reply.header('x-ratelimit-limit', capacity).header('x-ratelimit-remaining', res.remainingPoints).header('x-ratelimit-reset', Math.ceil(res.msBeforeNext / 1000))
    } catch (rejected) {
      if (!(rejected instanceof RateLimiterRes)) throw rejected
      reply.code(429).header('retry-after', Math.max(1, Math.ceil(rejected.msBeforeNext / 1000)))
        .header('x-ratelimit-limit', capacity).header('x-ratelimit-remaining', 0)
        .type('application/problem+json').send({ title: 'Too Many Requests', status: 429 })
      return reply
    }
  })
}
await app.register(httpProxy, {
  upstream: env.UPSTREAM_URL!,
  undici: { connections: 128, pipelining: 1, keepAliveTimeout: 60_000 } as object,
  replyOptions: { retryDelay: () => null }
})
await app.listen({ port: Number(process.env.PORT ?? 0), host: '127.0.0.1' })
process.stdout.write(JSON.stringify({ ready: true, port: (app.server.address() as AddressInfo).port }) + '\n')
process.on('SIGTERM', () => { void app.close().then(close).then(() => process.exit(0)) })
