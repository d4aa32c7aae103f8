/**
 * The cluster primary (proxy.workers > 1): forks the workers, which share the proxy and control
 * ports through node:cluster; replaces a worker that dies, with a growing delay; stops them all
 * gracefully on request; and answers the questions that concern every worker (readiness, the
 * aggregated metrics, forgetting a reset bucket) by asking each one. It serves no traffic and
 * holds no store connection.
 */
import cluster, { type Worker } from 'node:cluster'
import { AggregatorRegistry, Counter, Gauge, Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client'
import { WorkerStartError } from '../core/errors.ts'
import type { Logger } from '../observability/log.ts'
import { ENV_COUNT, ENV_MIGRATED, ENV_SLOT, isOurs, TAG, type Query, type Question, type ToPrimary, type ToWorker, type WorkerReadiness } from './protocol.ts'

export interface PrimaryOptions {
  readonly count: number
  /** The migrations are applied: workers skip them. */
  readonly migrated: boolean
  readonly log: Logger
  /** Longest wait for a worker's own answer to a query; a silent worker counts as not ready. */
  readonly queryTimeoutMs?: number
  /** Longest wait for the workers' graceful shutdown (theirs is 25 s) before they are killed. */
  readonly shutdownTimeoutMs?: number
}

interface Slot {
  worker: Worker
  startedAt: number
  listening: boolean
  /** Deaths in a row of workers that lived less than STABLE_MS: sets the restart delay. */
  failures: number
  restart: NodeJS.Timeout | undefined
  /** Reloads ordered before this worker was forked (it read the files after them). */
  readonly reloads: number
}

/** A worker that served this long before dying is not crash-looping: its delay starts over. */
const STABLE_MS = 30_000
const FIRST_DELAY_MS = 200
const MAX_DELAY_MS = 30_000

type MetricJson = MetricObjectWithValues<MetricValue<string>>

export interface Listening { readonly port: number, readonly controlPort: number, readonly pids: readonly number[] }

export class Primary {
  readonly #options: PrimaryOptions
  readonly #log: Logger
  readonly #slots = new Map<number, Slot>()
  readonly #queries = new Map<number, { readonly answers: Map<number, unknown>, readonly expected: Set<number>, readonly done: () => void }>()
  #nextQuery = 1
  #started = false
  #stopping: Promise<number> | undefined
  #startFailed: ((err: Error) => void) | undefined
  #exitCodes: Array<number | null> = []
  /** Reloads ordered so far; a worker started before the latest one is sent it once it serves. */
  #reloads = 0
  /** Each worker's series as of the last scrape it answered. */
  readonly #lastMetrics = new Map<number, MetricJson[]>()
  /**
   * The counters and histograms of workers that died, as of the last scrape each answered,
   * summed: kept in the aggregate so that a sum Prometheus has seen never goes down (it would
   * read a drop as a counter reset and rate() would jump).
   */
  #retired: MetricJson[] = []

  readonly registry = new Registry()
  readonly #running = new Gauge({ name: 'gateway_workers', help: 'Worker processes serving now (proxy.workers > 1); below gateway_workers_expected while one is being replaced.', registers: [this.registry] })
  readonly #expected = new Gauge({ name: 'gateway_workers_expected', help: 'Worker processes configured (proxy.workers, auto resolved).', registers: [this.registry] })
  readonly #restarts = new Counter({ name: 'gateway_worker_restarts_total', help: 'Worker processes that exited unexpectedly and were replaced.', registers: [this.registry] })

  constructor (options: PrimaryOptions) {
    this.#options = options
    this.#log = options.log
    this.#expected.set(options.count)
    this.#running.set(0)
    this.#restarts.inc(0)
  }

  /** Forks every worker; resolves once all serve, rejects if one exits before it does. */
  async start (): Promise<Listening> {
    const first = new Promise<Listening>((resolve, reject) => {
      this.#startFailed = reject
      let listening: { port: number, controlPort: number } | undefined
      const check = (): void => {
        if (listening === undefined || [...this.#slots.values()].some((s) => !s.listening)) return
        this.#started = true
        this.#startFailed = undefined
        resolve({ ...listening, pids: [...this.#slots.values()].map((s) => s.worker.process.pid ?? 0) })
      }
      this.#onListening = (ports) => { listening ??= ports; check() }
    })
    for (let slot = 1; slot <= this.#options.count; slot++) this.#fork(slot, 0)
    return await first
  }

  #onListening: (ports: { port: number, controlPort: number }) => void = () => {}

  /** Every worker reloads its configuration (SIGHUP to the primary). */
  reload (reason: string): void {
    this.#reloads++
    for (const { worker } of this.#slots.values()) this.#send(worker, { tag: TAG, kind: 'reload', reason })
  }

  /**
   * Stops every worker gracefully (each finishes its in-flight requests); resolves with the exit
   * code for the primary: 0 when every worker exited 0.
   */
  stop (): Promise<number> {
    this.#stopping ??= (async () => {
      const live = [...this.#slots.values()]
      for (const slot of live) clearTimeout(slot.restart)
      const exits = live.filter((s) => !s.worker.isDead())
        .map(async (s) => await new Promise<void>((resolve) => { s.worker.once('exit', () => resolve()) }))
      for (const { worker, listening } of live) {
        // One still starting may not listen for messages yet, and has nothing to drain.
        if (listening && worker.isConnected()) this.#send(worker, { tag: TAG, kind: 'shutdown' })
        else if (!worker.isDead()) worker.process.kill('SIGTERM')
      }
      const timeoutMs = this.#options.shutdownTimeoutMs ?? 30_000
      let timer: NodeJS.Timeout | undefined
      const timedOut = await Promise.race([
        Promise.all(exits).then(() => false),
        new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(true), timeoutMs) })
      ])
      clearTimeout(timer)
      if (timedOut) {
        this.#log.error({ timeout_ms: timeoutMs }, 'workers did not stop in time; killing them')
        for (const { worker } of live) if (!worker.isDead()) worker.process.kill('SIGKILL')
        return 1
      }
      return this.#exitCodes.every((c) => c === 0) ? 0 : 1
    })()
    return this.#stopping
  }

  #fork (slot: number, failures: number): void {
    const worker = cluster.fork({ [ENV_SLOT]: String(slot), [ENV_COUNT]: String(this.#options.count), [ENV_MIGRATED]: this.#options.migrated ? '1' : '0' })
    const entry: Slot = { worker, startedAt: Date.now(), listening: false, failures, restart: undefined, reloads: this.#reloads }
    this.#slots.set(slot, entry)
    worker.on('message', (message: unknown) => { if (isOurs<ToPrimary>(message)) this.#receive(slot, entry, message) })
    worker.on('exit', (code, signal) => { this.#exited(slot, entry, code, signal) })
    // An IPC write to a worker that just died fails; its exit event says what happened.
    worker.on('error', () => {})
  }

  #exited (slot: number, entry: Slot, code: number | null, signal: string | null): void {
    if (entry.listening) this.#running.dec()
    const last = this.#lastMetrics.get(slot)
    this.#lastMetrics.delete(slot)
    if (last !== undefined) void this.#retire(last)
    for (const q of this.#queries.values()) if (q.expected.delete(slot) && q.expected.size === 0) q.done()
    if (this.#stopping !== undefined) {
      // A worker stopped before it served ends by the signal: that is not a failed drain.
      this.#exitCodes.push(entry.listening ? code : 0)
      return
    }
    const pid = entry.worker.process.pid
    if (!this.#started) {
      // A start-up failure (a port in use, PostgreSQL refusing us): the worker logged why. The
      // same would happen again, so the gateway does not start rather than retrying forever.
      this.#startFailed?.(new WorkerStartError(`worker ${slot} (pid ${pid}) exited with ${signal ?? `code ${code}`} before it was serving; its log line above says why`))
      this.#startFailed = undefined
      return
    }
    const failures = Date.now() - entry.startedAt < STABLE_MS ? entry.failures + 1 : 1
    const delayMs = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (failures - 1))
    this.#restarts.inc()
    this.#log.error({ worker: slot, worker_pid: pid, code, signal, restart_in_ms: delayMs, deaths_in_a_row: failures }, 'worker exited unexpectedly; starting a new one')
    entry.restart = setTimeout(() => {
      if (this.#stopping === undefined) this.#fork(slot, failures)
    }, delayMs)
  }

  #receive (slot: number, entry: Slot, message: ToPrimary): void {
    switch (message.kind) {
      case 'listening':
        if (!entry.listening) this.#running.inc()
        entry.listening = true
        if (this.#started) this.#log.info({ worker: slot, worker_pid: entry.worker.process.pid }, 'worker replaced and serving')
        // A reload ordered while this one was starting may have come after it read its files.
        if (entry.reloads < this.#reloads) this.#send(entry.worker, { tag: TAG, kind: 'reload', reason: 'reload ordered while this worker was starting' })
        this.#onListening({ port: message.port, controlPort: message.controlPort })
        return
      case 'answer': {
        const q = this.#queries.get(message.id)
        if (q === undefined || !q.expected.has(slot)) return
        q.answers.set(slot, message.value)
        q.expected.delete(slot)
        if (q.expected.size === 0) q.done()
        return
      }
      case 'ask':
        void this.#answer(message.question).then(
          (value) => { this.#send(entry.worker, { tag: TAG, kind: 'reply', id: message.id, value }) },
          (err: Error) => { this.#send(entry.worker, { tag: TAG, kind: 'reply', id: message.id, error: err.message }) })
    }
  }

  async #answer (question: Question): Promise<unknown> {
    switch (question.what) {
      case 'readiness': {
        const answers = await this.#query({ what: 'readiness' })
        const workers = [...answers.values()].filter((a): a is WorkerReadiness => a !== null).sort((a, b) => a.worker - b.worker)
        return { expected: this.#options.count, workers }
      }
      case 'metrics': {
        const answers = await this.#query({ what: 'metrics' })
        for (const [slot, value] of answers) if (Array.isArray(value)) this.#lastMetrics.set(slot, value as MetricJson[])
        const all = [...answers.values()].filter((a) => Array.isArray(a)) as MetricJson[][]
        all.push(this.#retired, await this.registry.getMetricsAsJSON() as MetricJson[])
        return await AggregatorRegistry.aggregate(all).metrics()
      }
      case 'forget': {
        const asked = this.#serving().length
        const answers = await this.#query({ what: 'forget', cacheNames: question.cacheNames, key: question.key })
        if (answers.size < asked) throw new Error(`${asked - answers.size} of ${asked} workers did not confirm in time`)
        return null
      }
    }
  }

  async #retire (last: MetricJson[]): Promise<void> {
    const monotonic = last.filter((m) => String(m.type) === 'counter' || String(m.type) === 'histogram')
    this.#retired = await AggregatorRegistry.aggregate([this.#retired, monotonic]).getMetricsAsJSON() as MetricJson[]
  }

  #serving (): Array<[number, Slot]> {
    return [...this.#slots.entries()].filter(([, s]) => s.listening && s.worker.isConnected())
  }

  /** Asks every serving worker; resolves with the answers that came in time, by slot. */
  async #query (query: Query): Promise<Map<number, unknown>> {
    const id = this.#nextQuery++
    const targets = this.#serving()
    const answers = new Map<number, unknown>()
    if (targets.length === 0) return answers
    await new Promise<void>((resolve) => {
      const timer = setTimeout(finish, this.#options.queryTimeoutMs ?? 3_000)
      function finish (): void { clearTimeout(timer); resolve() }
      this.#queries.set(id, { answers, expected: new Set(targets.map(([slot]) => slot)), done: finish })
      for (const [, s] of targets) this.#send(s.worker, { tag: TAG, kind: 'query', id, query })
    })
    this.#queries.delete(id)
    return answers
  }

  #send (worker: Worker, message: ToWorker): void {
    if (worker.isConnected()) worker.send(message)
  }
}
