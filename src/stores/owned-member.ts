/**
 * How a Redis-owned bucket is named in the owned set (src/stores/redis/scripts.ts): a JSON array
 * of the policy, the caller and the numbers it was decided with. Shared by the Redis adapter and
 * its in-memory twin, so both read and write the same members.
 */
import type { Policy } from '../core/domain.ts'
import type { OwnedBucket } from '../core/ports.ts'

/** An owned bucket as read from the set: the member it was read as, to remove exactly that. */
export interface OwnedMember extends OwnedBucket {
  readonly member: string
}

export function encodeMember (policy: Policy, userId: string): string {
  return JSON.stringify([policy.name, userId, policy.capacity, policy.refillPerSecond, policy.cacheName ?? policy.name])
}

/** The member of an owned bucket, as read or as it would be written. */
export function memberOf (b: OwnedBucket): string {
  return (b as Partial<OwnedMember>).member ?? encodeMember({ name: b.policy, capacity: b.capacity, refillPerSecond: b.refillPerSecond, cacheName: b.cacheName }, b.userId)
}

export function decodeMember (member: string): OwnedMember | null {
  try {
    const value: unknown = JSON.parse(member)
    if (!Array.isArray(value) || value.length !== 5) return null
    const [policy, userId, capacity, refillPerSecond, cacheName] = value as unknown[]
    if (typeof policy !== 'string' || typeof userId !== 'string' || typeof capacity !== 'number' ||
        typeof refillPerSecond !== 'number' || !(capacity > 0) || !(refillPerSecond > 0) || typeof cacheName !== 'string') return null
    return { member, policy, cacheName, userId, capacity, refillPerSecond }
  } catch {
    return null
  }
}
