/**
 * Hot reload: the live configuration is one reference, replaced whole. A request reads it
 * once when it arrives and keeps that object to the end, so it never sees half of an old
 * configuration and half of a new one, and a reload never touches a listener or a socket.
 */
export class Holder<T> {
  #current: T
  constructor (initial: T) {
    this.#current = initial
  }

  get current (): T {
    return this.#current
  }

  swap (next: T): T {
    const previous = this.#current
    this.#current = next
    return previous
  }
}
