/**
 * Group commit: callers submit one item each; items are sent to the store in batches, one
 * round trip per batch. A batch leaves as soon as a slot is free (at most `maxInFlight`
 * batches at once), after `windowMs` if set, or on the next turn of the event loop. While all
 * slots are busy, arrivals accumulate, so batches grow with load and stay small when idle.
 */
export interface BatcherOptions {
  maxSize: number
  maxInFlight: number
  windowMs: number
  /** An item that waited longer than this for a slot is rejected with `expired(waited)`, not sent. */
  maxWaitMs?: number
  expired?: (waitedMs: number) => unknown
}

interface Pending<I, O> {
  item: I
  resolve: (value: O) => void
  reject: (err: unknown) => void
  /** performance.now() at submit, when maxWaitMs is set. */
  at: number
}

export class Batcher<I, O> {
  readonly #send: (items: I[]) => Promise<O[]>
  readonly #options: BatcherOptions
  #queue: Array<Pending<I, O>> = []
  #inFlight = 0
  #scheduled = false
  /** The window's timer, while one is set (windowMs >= 1). */
  #timer: NodeJS.Timeout | null = null

  constructor (send: (items: I[]) => Promise<O[]>, options: BatcherOptions) {
    this.#send = send
    this.#options = options
  }

  /** `windowMs`: this item's window, when not the batcher's (an item that may wait longer, or not at all). */
  submit (item: I, windowMs = this.#options.windowMs): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject, at: this.#options.maxWaitMs === undefined ? 0 : performance.now() })
      if (this.#queue.length >= this.#options.maxSize) this.#flush()
      else this.#schedule(windowMs)
    })
  }

  get pending (): number { return this.#queue.length }

  /** Nothing queued, nothing in flight. */
  get idle (): boolean { return this.#queue.length === 0 && this.#inFlight === 0 }

  /** Sends what is queued now, as far as slots allow, without waiting for the window. */
  flushNow (): void {
    this.#flush()
    if (this.#queue.length === 0 && this.#timer !== null) {
      clearTimeout(this.#timer)
      this.#timer = null
      this.#scheduled = false
    }
  }

  /** Every slot is in flight: an item submitted now waits for one. */
  get saturated (): boolean { return this.#inFlight >= this.#options.maxInFlight }

  #schedule (windowMs: number): void {
    if (this.#scheduled) {
      // Already leaving as soon, or an item that may not wait joins a batch held for a window.
      if (windowMs >= 1 || this.#timer === null) return
      clearTimeout(this.#timer)
      this.#timer = null
    }
    this.#scheduled = true
    const run = (): void => { this.#scheduled = false; this.#timer = null; this.#flush() }
    if (windowMs >= 1) this.#timer = setTimeout(run, windowMs)
    else setImmediate(run)
  }

  #flush (): void {
    while (this.#queue.length > 0 && this.#inFlight < this.#options.maxInFlight) {
      let batch = this.#queue.splice(0, this.#options.maxSize)
      if (this.#options.maxWaitMs !== undefined) {
        batch = this.#dropExpired(batch)
        if (batch.length === 0) continue
      }
      this.#inFlight++
      this.#send(batch.map((p) => p.item)).then((results) => {
        for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results[i]!)
      }, (err: unknown) => {
        for (const p of batch) p.reject(err)
      }).finally(() => {
        this.#inFlight--
        if (this.#queue.length > 0) this.#flush()
      })
    }
  }

  #dropExpired (batch: Array<Pending<I, O>>): Array<Pending<I, O>> {
    const now = performance.now()
    const limit = this.#options.maxWaitMs!
    if (now - batch[0]!.at <= limit) return batch // oldest first: nothing expired
    const kept: Array<Pending<I, O>> = []
    for (const p of batch) {
      const waited = now - p.at
      if (waited <= limit) kept.push(p)
      else p.reject(this.#options.expired?.(waited) ?? new Error(`waited ${Math.round(waited)} ms for a batch slot`))
    }
    return kept
  }
}
