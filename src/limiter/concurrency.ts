/**
 * Concurrency policies (`concurrency: N`): at most N requests of one caller in flight across
 * all gateways. A slot is a lease in Redis (the LeaseStore port) taken before the request is
 * forwarded and released when its response ends or the client leaves; this gateway renews its
 * live leases every leaseMs / 3, so a lease outlives its gateway by at most leaseMs. With Redis
 * unavailable each gateway enforces its share, max(1, floor(N / FAIL_LOCAL_REPLICAS)), alone.
 */
import { randomUUID } from 'node:crypto'
import { makeConcurrencyDecision } from '../core/decision.ts'
import type { Decision, Policy } from '../core/domain.ts'
import type { LeaseStore } from '../core/ports.ts'
import type { Metrics } from '../observability/metrics.ts'

interface Held { readonly policy: string, readonly userId: string, readonly leaseId: string, readonly local: boolean }

/** The slots one request holds; release() frees them (once). */
export class Slots {
  #held: Held[] | null
  readonly #owner: ConcurrencyLimiter

  constructor (owner: ConcurrencyLimiter, held: Held[]) {
    this.#owner = owner
    this.#held = held
  }

  release (): void {
    const held = this.#held
    if (held === null) return
    this.#held = null
    this.#owner.free(held)
  }
}

export interface SlotOutcome {
  /** One decision per concurrency policy (refused ones say so). */
  readonly decisions: Decision[]
  /** Held slots when every policy had one free, else null (and nothing is held). */
  readonly slots: Slots | null
}

export class ConcurrencyLimiter {
  readonly #store: LeaseStore
  readonly #metrics: Metrics
  readonly #leaseMs: number
  #replicas: number
  readonly #gateway = randomUUID()
  #next = 0
  readonly #live = new Map<string, Held>()
  readonly #local = new Map<string, number>()
  readonly #timer: NodeJS.Timeout

  constructor (store: LeaseStore, leaseMs: number, localReplicas: number, metrics: Metrics) {
    this.#store = store
    this.#leaseMs = leaseMs
    this.#replicas = localReplicas
    this.#metrics = metrics
    this.#timer = setInterval(() => { void this.#renew() }, Math.max(50, Math.floor(leaseMs / 3)))
    this.#timer.unref()
  }

  /** A reload changed FAIL_LOCAL_REPLICAS. */
  reconfigure (localReplicas: number): void { this.#replicas = localReplicas }

  /** In flight through this gateway (its live leases and local slots). */
  get held (): number { return this.#live.size + [...this.#local.values()].reduce((a, b) => a + b, 0) }

  /** Takes a slot of every policy, or none. */
  async acquire (policies: readonly Policy[], userId: string): Promise<SlotOutcome> {
    const held: Held[] = []
    const decisions: Decision[] = []
    let refused = false
    for (const policy of policies) {
      const limit = policy.concurrency ?? policy.capacity
      const leaseId = `${this.#gateway}:${++this.#next}`
      const verdict = refused ? { kind: 'refused' as const, inFlight: limit } : await this.#store.acquire(policy.name, userId, limit, leaseId, this.#leaseMs)
      if (verdict.kind === 'unavailable') {
        const share = Math.max(1, Math.floor(limit / this.#replicas))
        const key = policy.name + '\n' + userId
        const n = this.#local.get(key) ?? 0
        const ok = n < share
        if (ok) { this.#local.set(key, n + 1); held.push({ policy: policy.name, userId, leaseId, local: true }) }
        this.#metrics.concurrency.inc({ policy: policy.name, result: ok ? 'acquired' : 'refused', decided_by: 'gateway' })
        decisions.push(makeConcurrencyDecision({ ...policy, concurrency: share, capacity: share }, ok, ok ? n + 1 : n, 'local-fallback', 'gateway'))
        refused ||= !ok
        continue
      }
      const ok = verdict.kind === 'acquired'
      if (ok) {
        const h = { policy: policy.name, userId, leaseId, local: false }
        held.push(h)
        this.#live.set(leaseId, h)
      }
      this.#metrics.concurrency.inc({ policy: policy.name, result: ok ? 'acquired' : 'refused', decided_by: 'redis' })
      decisions.push(makeConcurrencyDecision(policy, ok, verdict.inFlight, 'redis', 'redis'))
      refused ||= !ok
    }
    if (refused) {
      this.free(held)
      return { decisions, slots: null }
    }
    return { decisions, slots: new Slots(this, held) }
  }

  /** Frees held slots (a refused request's, or a finished one's). */
  free (held: readonly Held[]): void {
    for (const h of held) {
      if (h.local) {
        const key = h.policy + '\n' + h.userId
        const n = (this.#local.get(key) ?? 1) - 1
        if (n <= 0) this.#local.delete(key)
        else this.#local.set(key, n)
      } else {
        this.#live.delete(h.leaseId)
        void this.#store.release(h.policy, h.userId, h.leaseId)
      }
    }
  }

  async #renew (): Promise<void> {
    if (this.#live.size === 0) return
    await this.#store.renew([...this.#live.values()], this.#leaseMs)
  }

  close (): void {
    clearInterval(this.#timer)
  }
}
