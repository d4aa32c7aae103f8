/**
 * CORS preflights (OPTIONS with Origin and Access-Control-Request-Method): a browser sends them
 * without credentials, so without the caller id. With proxy.preflight = forward they go to the
 * upstream without a caller id and without spending, limited instead per client address by
 * in-process token buckets (src/core/token-bucket.ts), so they cannot be used to flood it.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { BucketSnapshot, Policy } from '../core/domain.ts'
import { consume, msUntilAffordable } from '../core/token-bucket.ts'

export function isPreflight (method: string, headers: IncomingHttpHeaders): boolean {
  return method === 'OPTIONS' && headers.origin !== undefined && headers['access-control-request-method'] !== undefined
}

export interface PreflightLimits {
  readonly capacity: number
  readonly refillPerSecond: number
  readonly maxAddresses: number
}

export class PreflightLimiter {
  readonly #policy: Policy
  readonly #max: number
  readonly #buckets = new Map<string, BucketSnapshot>()
  readonly #now: () => number

  constructor (limits: PreflightLimits, now: () => number = () => performance.now()) {
    this.#policy = { name: 'preflight', capacity: limits.capacity, refillPerSecond: limits.refillPerSecond }
    this.#max = limits.maxAddresses
    this.#now = now
  }

  /** 0 when this address may send a preflight now, else the seconds to wait (≥ 1). */
  take (address: string): number {
    const now = this.#now()
    const previous = this.#buckets.get(address) ?? null
    const { allowed, snapshot } = consume(previous, this.#policy, 1, now)
    // Re-inserted so the Map's order is least recently used first; the oldest go past the bound.
    if (previous !== null) this.#buckets.delete(address)
    else if (this.#buckets.size >= this.#max) this.#buckets.delete(this.#buckets.keys().next().value!)
    this.#buckets.set(address, snapshot)
    return allowed ? 0 : Math.max(1, Math.ceil(msUntilAffordable(snapshot.tokens, this.#policy, 1) / 1000))
  }
}
