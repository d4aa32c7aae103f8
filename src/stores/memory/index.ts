/**
 * The store ports in memory (src/core/ports.ts), for fast tests of the decision flow without
 * servers: a backend of its own beside src/stores/postgres and src/stores/redis, transcribing
 * their semantics (migrations/003 and 005, src/stores/redis/scripts.ts).
 */
export { MemoryPostgres, type MemoryPostgresOptions } from './memory-postgres.ts'
export { MemoryRedis, MemoryRedisDecider, MemorySnapshotCache, MemoryWriteBehindRedis, encodeSnapshot, memoryBucketKey, parseValue, type MemoryRedisOptions } from './memory-redis.ts'
