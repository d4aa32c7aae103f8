/** The process logger: pino JSON, one line per event, secrets redacted. */
import { pino, type Logger } from 'pino'

export type { Logger }

export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    // The seed's field names: "ts" epoch seconds, "msg".
    base: undefined,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'req.headers["proxy-authorization"]', 'headers.authorization', 'headers.cookie'],
      censor: '[redacted]'
    }
  }, destination)
}
