/**
 * A worker's side of the cluster (proxy.workers > 1): asks the primary the questions that
 * concern every worker (the control API's ClusterView), answers the primary's questions about
 * itself (readiness, its metrics for the primary to aggregate, forgetting a reset bucket), and
 * takes relayed reloads and the shutdown order.
 */
import type { ClusterReadiness, ClusterView, LocalReadiness } from '../control/deps.ts'
import { WorkerTimeout } from '../core/errors.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'
import { ENV_COUNT, ENV_MIGRATED, ENV_SLOT, isOurs, TAG, type Query, type Question, type ToPrimary, type ToWorker } from './protocol.ts'

/** What a worker does when the primary asks: wired by src/server.ts once the gateway runs. */
export interface WorkerHandlers {
  readonly readiness: () => Promise<LocalReadiness>
  readonly forget: (cacheName: string, key: string) => void
  readonly reload: (reason: string) => void
  readonly metrics: Metrics
}

/** Longer than the primary's own wait for every worker (its answer is what is awaited here). */
const ASK_TIMEOUT_MS = 6_000

/** This process's slot (1..workers) when it is a worker forked by the primary, else null. */
export function workerSlot (env: NodeJS.ProcessEnv = process.env): number | null {
  const slot = Number(env[ENV_SLOT])
  return Number.isInteger(slot) && slot > 0 && process.send !== undefined ? slot : null
}

export class WorkerLink implements ClusterView {
  readonly slot: number
  readonly count: number
  /** The primary applied the migrations before forking: this worker skips them. */
  readonly migrated: boolean
  readonly #log: Logger
  readonly #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void, timer: NodeJS.Timeout }>()
  #nextId = 1
  #handlers: WorkerHandlers | undefined
  // Before the gateway runs there is nothing to drain: a shutdown order then just ends it.
  #onShutdown: () => void = () => { process.exit(0) }

  constructor (log: Logger, env: NodeJS.ProcessEnv = process.env) {
    this.slot = Number(env[ENV_SLOT])
    this.count = Number(env[ENV_COUNT])
    this.migrated = env[ENV_MIGRATED] === '1'
    this.#log = log
    process.on('message', (message: unknown) => { if (isOurs<ToWorker>(message)) this.#receive(message) })
  }

  /** Starts answering the primary for this gateway. */
  attach (handlers: WorkerHandlers): void {
    this.#handlers = handlers
  }

  /** Tells the primary this worker serves, on these ports. */
  listening (port: number, controlPort: number): void {
    this.#send({ tag: TAG, kind: 'listening', port, controlPort })
  }

  /** Called once when the primary orders a graceful shutdown. */
  onShutdown (fn: () => void): void {
    this.#onShutdown = fn
  }

  async readiness (): Promise<ClusterReadiness> {
    return await this.#ask({ what: 'readiness' }) as ClusterReadiness
  }

  async metrics (): Promise<string> {
    return await this.#ask({ what: 'metrics' }) as string
  }

  async forget (cacheNames: readonly string[], key: string): Promise<void> {
    try {
      await this.#ask({ what: 'forget', cacheNames, key })
    } catch (err) {
      // The reset itself is done; a worker that did not confirm drops the entry at its expiry.
      this.#log.warn({ err, key, policies: cacheNames }, 'not every worker confirmed forgetting a reset bucket')
    }
  }

  #ask (question: Question): Promise<unknown> {
    const id = this.#nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new WorkerTimeout(`the cluster primary did not answer "${question.what}" within ${ASK_TIMEOUT_MS} ms`))
      }, ASK_TIMEOUT_MS)
      this.#pending.set(id, { resolve, reject, timer })
      this.#send({ tag: TAG, kind: 'ask', id, question })
    })
  }

  #receive (message: ToWorker): void {
    switch (message.kind) {
      case 'reply': {
        const waiting = this.#pending.get(message.id)
        if (waiting === undefined) return
        this.#pending.delete(message.id)
        clearTimeout(waiting.timer)
        if (message.error !== undefined) waiting.reject(new Error(message.error))
        else waiting.resolve(message.value)
        return
      }
      case 'query':
        void this.#answer(message.id, message.query)
        return
      case 'reload':
        this.#handlers?.reload(message.reason)
        return
      case 'shutdown':
        this.#onShutdown()
    }
  }

  async #answer (id: number, query: Query): Promise<void> {
    const handlers = this.#handlers
    let value: unknown = null
    if (handlers !== undefined) {
      if (query.what === 'readiness') value = { worker: this.slot, pid: process.pid, ...await handlers.readiness() }
      else if (query.what === 'metrics') value = await this.#metricsJson(handlers.metrics)
      else for (const name of query.cacheNames) handlers.forget(name, query.key)
    }
    this.#send({ tag: TAG, kind: 'answer', id, value })
  }

  /**
   * This worker's series in prom-client's JSON form, for AggregatorRegistry.aggregate in the
   * primary, plus one series of its own, labelled worker, that shows how evenly the connections
   * are spread (computed here at scrape time: nothing on the request path).
   */
  async #metricsJson (metrics: Metrics): Promise<unknown[]> {
    const all: unknown[] = await metrics.registry.getMetricsAsJSON()
    const { values } = await metrics.decisions.get()
    all.push({
      name: 'gateway_worker_decisions_total',
      help: 'Rate-limit decisions made by each worker process (proxy.workers > 1), by worker slot: how evenly the connections are spread.',
      type: 'counter',
      aggregator: 'sum',
      values: [{ labels: { worker: String(this.slot) }, value: values.reduce((n, v) => n + v.value, 0) }]
    })
    return all
  }

  #send (message: ToPrimary): void {
    // The channel is gone only when the primary is: Node's cluster ends this worker then.
    if (process.connected) process.send!(message)
  }
}
