/**
 * Whether this process can serve (GET /readyz): PostgreSQL answers (control.readiness:
 * postgres) or requests can be decided at all (deciding). With several workers the route asks
 * every worker this (src/workers) and is ready only when all of them are.
 */
import type { ControlDeps, LocalReadiness } from './deps.ts'

export async function localReadiness (deps: Pick<ControlDeps, 'config' | 'limiter' | 'store' | 'cache'>): Promise<LocalReadiness> {
  let postgres: 'up' | 'down' = 'up'
  try {
    await deps.store.ping()
  } catch {
    postgres = 'down'
  }
  const redis = await deps.cache.ping()
  const deciding = postgres === 'up' ? 'postgres' : deps.limiter.decidesWithoutPostgres(redis === 'up')
  const ready = deps.config.control.readiness === 'postgres' ? postgres === 'up' : deciding !== 'none'
  return { ready, postgres, redis, deciding }
}
