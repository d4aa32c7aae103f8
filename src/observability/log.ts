/** The process logger: pino JSON, one line per event, secrets redacted. */
import { pino, type Logger } from 'pino'

export type { Logger }

/** Credentials that must never reach a log line, wherever a header map is logged. */
const SECRET_HEADERS = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie']
const HEADER_MAPS = ['req.headers', 'res.headers', 'request.headers', 'headers', 'err.headers', 'err.request.headers']

export const REDACTED_PATHS = HEADER_MAPS.flatMap((map) => SECRET_HEADERS.map((h) => `${map}["${h}"]`))

export function createLogger (level: string, destination?: pino.DestinationStream, base?: Record<string, unknown>): Logger {
  return pino({
    level,
    // No pid/hostname on every line: the collector adds where a line came from. Worker
    // processes (proxy.workers > 1) share one stdout, so theirs say which worker wrote them.
    base: base ?? undefined,
    // Paths, not a serializer: pino compiles them once, so lines without them cost nothing.
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' }
  }, destination)
}
