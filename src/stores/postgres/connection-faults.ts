/**
 * postgres.js leaves one promise of its own unhandled: a new connection's first query (its array
 * types, `fetch_types`) is started and dropped (porsager/postgres#1192, #1223, open for 3.4.9).
 * A connection that dies at that moment (PostgreSQL stopping, failing over, a terminated
 * backend) rejects it with nobody listening, and the process would stop on a store fault that
 * the queries waiting on that connection already report. The gateway's pools no longer send
 * that query (arrays.ts); start.ts still keeps serving on such a rejection, should the driver
 * drop another.
 */
import postgres from 'postgres'

/** Socket errors of a connection that could not be made or was lost. */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])
/** postgres.js's own codes for a connection it closed or could not open. */
const DRIVER_CODES = new Set(['CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT'])

/**
 * A lost or refused connection: a socket or driver error, or PostgreSQL's connection exception
 * (SQLSTATE class 08), operator intervention (57: shut down, terminated, cancelled) or too many
 * connections (53300).
 */
export function isConnectionFault (reason: unknown): boolean {
  if (!(reason instanceof Error)) return false
  const code = (reason as { code?: unknown }).code
  if (typeof code !== 'string') return false
  if (reason instanceof postgres.PostgresError) return code.startsWith('08') || code.startsWith('57') || code === '53300'
  return SOCKET_CODES.has(code) || DRIVER_CODES.has(code)
}
