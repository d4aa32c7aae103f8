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
}

interface Pending<I, O> {
  item: I
  resolve: (value: O) => void
  reject: (err: unknown) => void
}

export class Batcher<I, O> {
  readonly #send: (items: I[]) => Promise<O[]>
  readonly #options: BatcherOptions
  #queue: Array<Pending<I, O>> = []
  #inFlight = 0
  #scheduled = false

  constructor (send: (items: I[]) => Promise<O[]>, options: BatcherOptions) {
    this.#send = send
    this.#options = options
  }

  submit (item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject })
      if (this.#queue.length >= this.#options.maxSize) this.#flush()
      else this.#schedule()
    })
  }

  get pending (): number { return this.#queue.length }

  #schedule (): void {
    if (this.#scheduled) return
    this.#scheduled = true
    const run = (): void => { this.#scheduled = false; this.#flush() }
    if (this.#options.windowMs >= 1) setTimeout(run, this.#options.windowMs)
    else setImmediate(run)
  }

  #flush (): void {
    while (this.#queue.length > 0 && this.#inFlight < this.#options.maxInFlight) {
      const batch = this.#queue.splice(0, this.#options.maxSize)
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
}
