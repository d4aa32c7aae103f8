/**
 * Builds the ioredis client for whatever REDIS_URL names: one server, a Redis Cluster, or a
 * Sentinel-monitored master (src/config/redis-url.ts). The cache code stays topology-blind:
 * every bucket's keys carry one hash tag (`prefix{policy:user}`), so each command and each
 * script call touches a single cluster slot.
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { parseRedisUrl } from '../../config/redis-url.ts'

/**
 * Options meant for one connection; for a cluster they become the per-node options, and
 * `retryStrategy` becomes the cluster's reconnect strategy.
 */
export type RedisClientOptions = RedisOptions

/**
 * A Cluster answers the same commands as a Redis (both are ioredis Commanders, with
 * defineCommand, pipelines and the connection events), so callers use one type and never
 * branch on the topology. The cast only hides the differing generic parameter.
 */
export type RedisClient = Redis

/** A Redis Cluster client: its buckets' keys live in different slots, so no command may span them. */
export function isCluster (client: Redis): boolean {
  return (client as { isCluster?: boolean }).isCluster === true
}

export function createRedisClient (url: string, options: RedisClientOptions): RedisClient {
  const target = parseRedisUrl(url)
  switch (target.mode) {
    case 'standalone':
      return new Redis(url, options)
    case 'sentinel':
      return new Redis({
        ...options,
        sentinels: target.sentinels.map((s) => ({ host: s.host, port: s.port })),
        name: target.masterName,
        db: target.db,
        ...(target.username !== undefined ? { username: target.username } : {}),
        ...(target.password !== undefined ? { password: target.password, sentinelPassword: target.password } : {}),
        ...(target.tls ? { tls: {}, enableTLSForSentinelMode: true } : {}),
        // Sentinel tells the new master after a failover; retry the lookup like a reconnect.
        ...(options.retryStrategy != null ? { sentinelRetryStrategy: options.retryStrategy } : {})
      })
    case 'cluster': {
      const { retryStrategy, enableOfflineQueue, enableAutoPipelining, lazyConnect, ...perNode } = options
      const cluster = new Cluster(target.nodes.map((n) => ({ host: n.host, port: n.port })), {
        ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
        ...(enableAutoPipelining !== undefined ? { enableAutoPipelining } : {}),
        ...(lazyConnect !== undefined ? { lazyConnect } : {}),
        clusterRetryStrategy: retryStrategy ?? null,
        // A node answering MOVED/ASK is followed; a cluster-wide outage is left to the breaker.
        retryDelayOnClusterDown: 50,
        slotsRefreshTimeout: options.connectTimeout ?? 1_000,
        redisOptions: {
          ...perNode,
          ...(target.username !== undefined ? { username: target.username } : {}),
          ...(target.password !== undefined ? { password: target.password } : {}),
          ...(target.tls ? { tls: {} } : {})
        }
      })
      return cluster as unknown as Redis
    }
  }
}
