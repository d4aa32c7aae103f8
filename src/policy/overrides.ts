/**
 * Per-caller overrides of a policy's capacity and refill rate, set through the admin API and
 * kept in PostgreSQL (rate_limit_overrides). Every gateway holds the whole table in memory
 * (src/stores/postgres/override-store.ts keeps it fresh), so applying one costs a map lookup: the decision
 * needs the effective numbers in the gateway anyway, for the Redis deny path and the headers.
 */
import { makeLimitPolicy, refundsOf, type LimitPolicy } from './policy-set.ts'

export interface Override {
  readonly policy: string
  readonly userId: string
  /** null keeps the policy's own value. */
  readonly capacity: number | null
  readonly refillPerSecond: number | null
  readonly updatedBy: string
  readonly updatedAt: string
}

interface Entry {
  readonly override: Override
  /** The configured policy the effective one was built from; a reload replaces it. */
  base: LimitPolicy | null
  effective: LimitPolicy | null
}

export class OverrideTable {
  readonly #byPolicy = new Map<string, Map<string, Entry>>()
  readonly size: number

  constructor (overrides: Iterable<Override> = []) {
    let n = 0
    for (const o of overrides) {
      let users = this.#byPolicy.get(o.policy)
      if (users === undefined) this.#byPolicy.set(o.policy, users = new Map())
      users.set(o.userId, { override: o, base: null, effective: null })
      n++
    }
    this.size = n
  }

  get (policy: string, userId: string): Override | undefined {
    return this.#byPolicy.get(policy)?.get(userId)?.override
  }

  /** The policy with the caller's override applied; the same object while nothing changes. */
  apply (policy: LimitPolicy, userId: string): LimitPolicy {
    if (this.size === 0) return policy
    const entry = this.#byPolicy.get(policy.name)?.get(userId)
    if (entry === undefined) return policy
    if (entry.base !== policy) {
      const o = entry.override
      entry.effective = effectivePolicy(policy, o.capacity, o.refillPerSecond)
      entry.base = policy
    }
    return entry.effective!
  }

  list (): Override[] {
    const out: Override[] = []
    for (const users of this.#byPolicy.values()) for (const e of users.values()) out.push(e.override)
    return out
  }
}

/** The configured policy with an override's numbers (and a cache name that says so). */
export function effectivePolicy (policy: LimitPolicy, capacity: number | null, refillPerSecond: number | null): LimitPolicy {
  return makeLimitPolicy(policy.name, capacity ?? policy.capacity, refillPerSecond ?? policy.refillPerSecond, policy.cost, policy.shadow, refundsOf(policy), policy.consistency)
}
