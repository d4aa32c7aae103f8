/** How many worker processes proxy.workers asks for. */
import { availableParallelism } from 'node:os'
import type { Config } from '../config/schema.ts'

export function workerCount (workers: Config['proxy']['workers'], cores: () => number = availableParallelism): number {
  return workers === 'auto' ? Math.max(1, cores()) : workers
}

/**
 * The configuration as one worker applies it. Each worker keeps its own in-process buckets for
 * the local fail mode and its own share of concurrency slots while Redis is down, so a
 * gateway's share (capacity / fallback.localReplicas) is split again between its workers:
 * fallback.localReplicas keeps counting gateways, and the whole host never admits more.
 */
export function perWorker (config: Config, workers: number): Config {
  if (workers <= 1) return config
  return { ...config, fallback: { ...config.fallback, localReplicas: config.fallback.localReplicas * workers } }
}
