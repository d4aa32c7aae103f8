/**
 * The logger Fastify gives every request (`request.log`, bound to its request id), made only
 * when the request logs something. At the default level a proxied request writes no line, and a
 * pino child per request (bindings serialised, an object for the young generation to collect)
 * is then cost for nothing. The first call at an enabled level (or `child`, `bindings`) makes
 * the real child from the same parent and bindings, so every line written is the one an eager
 * child would have written, request id included.
 */
import type { Bindings, ChildLoggerOptions, LevelWithSilentOrString } from 'pino'
import type { Logger } from './log.ts'

type Log = (...args: unknown[]) => void

export class LazyRequestLogger {
  readonly #parent: Logger
  readonly #bindings: Bindings
  #child: Logger | null = null

  constructor (parent: Logger, bindings: Bindings) {
    this.#parent = parent
    this.#bindings = bindings
  }

  /** The real child, made on first use. */
  get logger (): Logger {
    if (this.#child === null) this.#child = this.#parent.child(this.#bindings)
    return this.#child
  }

  get level (): LevelWithSilentOrString { return (this.#child ?? this.#parent).level }
  set level (level: LevelWithSilentOrString) { this.logger.level = level }

  isLevelEnabled (level: LevelWithSilentOrString): boolean {
    return (this.#child ?? this.#parent).isLevelEnabled(level)
  }

  // Prototype methods, not arrow fields: one small object per request, no closures.
  fatal (...args: unknown[]): void { if (this.isLevelEnabled('fatal')) { const l = this.logger; (l.fatal as Log).apply(l, args) } }
  error (...args: unknown[]): void { if (this.isLevelEnabled('error')) { const l = this.logger; (l.error as Log).apply(l, args) } }
  warn (...args: unknown[]): void { if (this.isLevelEnabled('warn')) { const l = this.logger; (l.warn as Log).apply(l, args) } }
  info (...args: unknown[]): void { if (this.isLevelEnabled('info')) { const l = this.logger; (l.info as Log).apply(l, args) } }
  debug (...args: unknown[]): void { if (this.isLevelEnabled('debug')) { const l = this.logger; (l.debug as Log).apply(l, args) } }
  trace (...args: unknown[]): void { if (this.isLevelEnabled('trace')) { const l = this.logger; (l.trace as Log).apply(l, args) } }
  silent (): void {}

  child (bindings: Bindings, options?: ChildLoggerOptions): Logger {
    return this.logger.child(bindings, options)
  }

  bindings (): Bindings {
    return this.logger.bindings()
  }
}

/**
 * Fastify's childLoggerFactory: lazy unless the route asks for its own level or serializers
 * (then the child must exist to carry them).
 */
export function lazyRequestLogger (logger: Logger, bindings: Bindings, options: ChildLoggerOptions): Logger {
  if (options.level !== undefined || options.serializers !== undefined) return logger.child(bindings, options)
  return new LazyRequestLogger(logger, bindings) as unknown as Logger
}
