/**
 * The client's address for identity.source "address". X-Forwarded-For is believed only as far
 * as it was written by proxies we trust: walk it from the right (the hop nearest to us),
 * skipping trusted proxies; the first address that is not one is the client. A peer that is
 * not trusted is the client itself, whatever it claims in the header. Pure.
 */
import { BlockList, isIP } from 'node:net'
import { parseAddressRange } from './schema.ts'

export function trustList (ranges: readonly string[]): BlockList {
  const list = new BlockList()
  for (const value of ranges) {
    const r = parseAddressRange(value)
    if (r === null) throw new Error(`not an IP address or CIDR range: ${value}`) // the schema refused it already
    list.addSubnet(r.address, r.prefix, r.family)
  }
  return list
}

/** "::ffff:10.0.0.1" (an IPv4 peer on a dual-stack socket) is 10.0.0.1. */
export function canonicalAddress (address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address
}

export function isTrusted (list: BlockList, address: string): boolean {
  const family = isIP(address)
  return family !== 0 && list.check(address, family === 4 ? 'ipv4' : 'ipv6')
}

export type AddressResult = { ok: true, address: string } | { ok: false, detail: string }

export function clientAddress (peer: string | undefined, forwardedFor: string | string[] | undefined, trusted: BlockList | null): AddressResult {
  if (peer === undefined) return { ok: false, detail: 'The client address is unknown.' }
  let current = canonicalAddress(peer)
  if (trusted === null || forwardedFor === undefined || !isTrusted(trusted, current)) return { ok: true, address: current }
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',')
  for (let i = hops.length - 1; i >= 0; i--) {
    if (!isTrusted(trusted, current)) break
    const hop = hops[i]!.trim()
    if (hop === '') continue
    const address = canonicalAddress(hop)
    if (isIP(address) === 0) return { ok: false, detail: 'X-Forwarded-For holds an entry that is not an IP address.' }
    current = address
  }
  return { ok: true, address: current }
}
