/**
 * The benchmark's comparison servers, each its own process: the same Fastify +
 * @fastify/http-proxy setup as the gateway (undici pool of 128, pipelining 1, no retries), with
 *   PEER_LIMITER=none      no limiter at all: the floor of this stack (case 2);
 *   PEER_LIMITER=redis     rate-limiter-flexible's RateLimiterRedis (case 7);
 *   PEER_LIMITER=postgres  rate-limiter-flexible's RateLimiterPostgres on node-postgres (case 7).
 * The peer gets the gateway's capacity as points per window of capacity/refill seconds
 * (rate-limiter-flexible counts fixed windows; it has no token bucket), the same caller header,
 * and answers 429 with Retry-After, as the gateway does.
 */
import httpProxy from '@fastify/http-proxy'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import pg from 'pg'
import { RateLimiterPostgres, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible'
import type { AddressInfo } from 'node:net'

const env = process.env
const mode = env.PEER_LIMITER ?? 'none'
const capacity = Number(env.RATE_LIMIT_CAPACITY ?? 10)
const refill = Number(env.RATE_LIMIT_REFILL_PER_SECOND ?? 1)
const header = env.USER_ID_HEADER ?? 'x-user-id'
const duration = Math.max(1, Math.ceil(capacity / refill))

async function makeLimiter (): Promise<{ limiter: RateLimiterAbstract | null, close: () => Promise<void> }> {
  if (mode === 'none') return { limiter: null, close: async () => {} }
  if (mode === 'redis') {
    // The same client options as the gateway's cache: auto-pipelining, fail fast.
    const client = new Redis(env.REDIS_URL ?? 'redis://127.0.0.1:6379', { enableAutoPipelining: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, lazyConnect: true })
    await client.connect()
    const limiter = new RateLimiterRedis({ storeClient: client, keyPrefix: env.REDIS_KEY_PREFIX ?? 'rlflx', points: capacity, duration })
    return { limiter, close: async () => { await client.quit() } }
  }
  if (mode === 'postgres') {
    // The gateway's pool size (10 by default).
    const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: Number(env.DATABASE_POOL_SIZE ?? 10) })
    const limiter = await new Promise<RateLimiterPostgres>((resolve, reject) => {
      const l: RateLimiterPostgres = new RateLimiterPostgres({ storeClient: pool, storeType: 'pool', tableName: 'rlflx_bench', points: capacity, duration, clearExpiredByTimeout: false },
        (err?: Error) => err ? reject(err) : resolve(l))
    })
    return { limiter, close: async () => { await pool.end() } }
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
      const res = await limiter.consume(id, 1)
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
