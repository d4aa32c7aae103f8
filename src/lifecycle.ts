/**
 * What a gateway has started, closed in reverse order, once: the same code runs on shutdown
 * and when start-up fails half-way, so nothing is left running and no close is skipped. A
 * close that fails is logged and the rest still close; the error that stopped a start-up
 * is never replaced by one from cleaning up after it.
 */
import type { Logger } from './observability/log.ts'

export class Lifecycle {
  readonly #log: Logger
  readonly #resources: Array<{ readonly name: string, readonly close: () => Promise<void> | void }> = []
  #closing: Promise<void> | undefined

  constructor (log: Logger) {
    this.#log = log
  }

  /** Registers something that has started; returns it, so start-up reads `x = started(start())`. */
  add<T> (name: string, resource: T, close: (resource: T) => Promise<void> | void): T {
    this.#resources.push({ name, close: () => close(resource) })
    return resource
  }

  close (): Promise<void> {
    this.#closing ??= (async () => {
      for (const r of this.#resources.reverse()) {
        try {
          await r.close()
        } catch (err) {
          this.#log.warn({ err, resource: r.name }, 'closing failed; continuing with the rest')
        }
      }
    })()
    return this.#closing
  }
}
