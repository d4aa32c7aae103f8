/**
 * Request ids: an incoming `x-request-id` is honoured so a request can be followed across
 * services; anything else gets a fresh UUID. Only a bounded run of printable ASCII is taken
 * from the client: the id goes into every log line of the request and upstream as a header.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'

export const REQUEST_ID_HEADER = 'x-request-id'
export const MAX_REQUEST_ID_LENGTH = 200

const ACCEPTABLE = /^[\x21-\x7e]+$/

export function requestIdFor (req: IncomingMessage): string {
  const given = req.headers[REQUEST_ID_HEADER]
  if (typeof given === 'string' && given.length <= MAX_REQUEST_ID_LENGTH && ACCEPTABLE.test(given)) return given
  return randomUUID()
}
