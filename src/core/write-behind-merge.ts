/**
 * The write-behind flush's merge, pure: PostgreSQL's row and a gateway's newer state of the
 * same bucket are both refilled to the later of their two times, and the lower count wins. So a
 * flush can never raise a bucket (a state older than the row cannot undo spending the row
 * holds), and the hand-back's rule (keep the lower) applies between gateways too. The same
 * arithmetic runs in SQL (src/stores/postgres/write-behind-ledger.ts) and in the in-memory
 * twin; keep them in step.
 */
import type { BucketSnapshot, Policy } from './domain.ts'
import { tokensAt } from './token-bucket.ts'

export function mergeLower (row: BucketSnapshot | null, incoming: BucketSnapshot, policy: Policy): BucketSnapshot {
  if (row === null) return { tokens: Math.min(policy.capacity, incoming.tokens), atMs: incoming.atMs }
  const atMs = Math.max(row.atMs, incoming.atMs)
  return { tokens: Math.min(tokensAt(row, policy, atMs), tokensAt(incoming, policy, atMs)), atMs }
}
