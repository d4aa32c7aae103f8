/**
 * Up/down state of one store. Logs once per transition (never per request) and keeps the
 * `gateway_store_up` gauge in step.
 */
import type { Logger } from '../observability/log.ts'
import type { Metrics, Store } from '../observability/metrics.ts'

export class StoreHealth {
  #up: boolean | undefined
  readonly #store: Store
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #listeners: Array<(up: boolean) => void> = []

  constructor (store: Store, log: Logger, metrics: Metrics) {
    this.#store = store
    this.#log = log
    this.#metrics = metrics
  }

  get up (): boolean { return this.#up === true }

  onChange (listener: (up: boolean) => void): void { this.#listeners.push(listener) }

  succeeded (): void {
    if (this.#up === true) return
    const first = this.#up === undefined
    this.#up = true
    this.#metrics.storeUp.set({ store: this.#store }, 1)
    if (first) this.#log.info(`Connected to ${this.#label()} successfully`)
    else this.#log.warn({ store: this.#store }, `${this.#label()} recovered`)
    for (const l of this.#listeners) l(true)
  }

  failed (err: unknown): void {
    if (this.#up === false) return
    this.#up = false
    this.#metrics.storeUp.set({ store: this.#store }, 0)
    this.#log.error({ store: this.#store, err }, `${this.#label()} unavailable`)
    for (const l of this.#listeners) l(false)
  }

  #label (): string { return this.#store === 'postgres' ? 'PostgreSQL' : 'Redis' }
}
