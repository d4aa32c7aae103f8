/**
 * Where the access log's lines go when the gateway logs to stdout: a buffer of their own.
 * Written line by line like every other log line, the access log cost one write(2) per request,
 * a third of its cost (bench case 3A, docs/performance.md). Buffered, its lines leave
 * in writes of about BUFFER_BYTES, and at least every FLUSH_MS while traffic is light (nginx's
 * `access_log ... buffer= flush=`). Every other log line is still written at once: a buffered
 * start-up, warning or outage line would arrive late or, on a crash, not at all.
 *
 * Each write is whole lines and at most PIPE_BUF (4096 bytes on Linux), so the workers of
 * proxy.workers > 1, which share one stdout, never interleave parts of lines even on a pipe.
 * A line longer than that is written alone (a caller id or path near their limits).
 */
import { pino } from 'pino'

const BUFFER_BYTES = 2048
const MAX_WRITE_BYTES = 4096
const FLUSH_MS = 1000

export interface AccessDestination extends pino.DestinationStream {
  /** Writes what is buffered, now (shutdown, exit). */
  flushSync: () => void
}

export function bufferedStdout (): AccessDestination {
  // Synchronous writes, as pino's stdout: no thread-pool hop per write, and flushSync works
  // at any moment, in an 'exit' handler too.
  return pino.destination({ dest: 1, sync: true, minLength: BUFFER_BYTES, maxWrite: MAX_WRITE_BYTES, periodicFlush: FLUSH_MS })
}
