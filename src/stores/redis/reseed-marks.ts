/**
 * The re-seed's keys in Redis (src/limiter/reseed.ts): one claim for the fleet, and per shard a
 * marker ("this shard holds the fleet's snapshots") and a progress key ("a re-seed is writing
 * here"). A shard is one server, or one master of a Cluster with its slots: a Cluster shard
 * restarted empty loses its own keys only, so a single marker, living on one shard, could not
 * see it.
 *
 * The progress key makes a loss during a re-seed visible: set on every shard when the claim is
 * taken, renewed with the claim after each page, and the marker is set (in the same script)
 * only where it is still there. A shard that lost its data meanwhile lost the key too, so the
 * run fails and the next one writes everything again.
 */
import calculateSlot from 'cluster-key-slot'
import { isCluster } from './client.ts'
import type { ScriptedRedis } from './scripts.ts'

/** One shard's keys; its hash tag maps to a slot the shard owns. */
export interface ReseedShard { readonly marker: string, readonly progress: string }

export type ClaimOutcome = 'claimed' | 'busy' | 'lost'

const SLOTS = 16_384

/** The fleet's claim: one key, on whichever shard owns the `{reseed}` slot. */
export function reseedClaimKey (prefix: string): string { return `${prefix}seeding{reseed}` }

/** A shard's marker and progress key under the hash tag `tag`. Not `<prefix>{`: the buckets' own shape. */
export function reseedShard (prefix: string, tag: string): ReseedShard {
  return { marker: `${prefix}seeded{${tag}}`, progress: `${prefix}reseeding{${tag}}` }
}

/** A hash tag for each slot asked for, found once (about 16,000 tries a slot) and kept. */
const tags = new Map<number, string>()

export function tagForSlot (slot: number): string {
  let tag = tags.get(slot)
  if (tag !== undefined) return tag
  for (let i = 0; ; i++) {
    const candidate = `reseed-${i}`
    const s = calculateSlot(candidate)
    if (!tags.has(s)) tags.set(s, candidate)
    if (s === slot) return candidate
  }
}

/**
 * The shards as the client sees them now: one for a server (the tag `reseed`), one per Cluster
 * master (the tag of the lowest slot it owns); null while a Cluster has no slot map.
 */
export function reseedShards (client: ScriptedRedis, prefix: string): ReseedShard[] | null {
  if (!isCluster(client)) return [reseedShard(prefix, 'reseed')]
  const slots = (client as unknown as { slots: string[][] }).slots
  const lowest = new Map<string, number>()
  for (let slot = 0; slot < SLOTS; slot++) {
    const master = slots[slot]?.[0]
    if (master === undefined) return null
    if (!lowest.has(master)) lowest.set(master, slot)
  }
  return [...lowest.values()].map((slot) => reseedShard(prefix, tagForSlot(slot)))
}

/** Whether every shard has its marker. */
export async function allSeeded (client: ScriptedRedis, shards: readonly ReseedShard[]): Promise<boolean> {
  const found = await Promise.all(shards.map(async (s) => await client.exists(s.marker)))
  return found.every((n) => n === 1)
}

/** Takes the claim, or renews it (`renew`: only if it is still `owner`'s: 'lost' otherwise). */
export async function claim (client: ScriptedRedis, prefix: string, owner: string, ttlMs: number, renew: boolean): Promise<ClaimOutcome> {
  const status = await client.rlReseedClaim(reseedClaimKey(prefix), owner, ttlMs, renew ? 'renew' : 'take')
  return status === 1 ? 'claimed' : status === 2 ? 'busy' : 'lost'
}

export async function releaseClaim (client: ScriptedRedis, prefix: string, owner: string): Promise<void> {
  await client.rlReseedClaim(reseedClaimKey(prefix), owner, 0, 'release')
}

/**
 * One step on every shard: `begin` sets the progress keys, `renew` extends them, `end` sets
 * the markers, `abort` removes the progress keys. True when every shard still had `owner`'s
 * progress key (always, for `begin`).
 */
export async function onShards (client: ScriptedRedis, shards: readonly ReseedShard[], owner: string, ttlMs: number,
  step: 'begin' | 'renew' | 'end' | 'abort'): Promise<boolean> {
  const held = await Promise.all(shards.map(async (s) => await client.rlReseedShard(s.marker, s.progress, owner, ttlMs, step)))
  return held.every((n) => n === 1)
}
