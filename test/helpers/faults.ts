/**
 * Network faults a test owns, closed at teardown: a TCP relay in front of a store that it can
 * cut (a partition: every connection dropped and new ones refused) and restore, and a relay that
 * stalls (keeps connections open, forwards nothing). The shared server itself is never touched.
 * The relays live in scripts/lib/relays.ts (shared with the chaos suite); private servers to
 * kill or pause are in private-stores.ts.
 */
import { startStallingRelay as startStalling, startTcpRelay as startTcp } from '../../scripts/lib/relays.ts'

interface TapLike { teardown: (fn: () => unknown) => void }

export interface TcpRelay {
  readonly port: number
  /** Drops every connection and refuses new ones. */
  cut: () => Promise<void>
  /** Accepts connections again, on the same port. */
  restore: () => Promise<void>
}

export async function startTcpRelay (t: TapLike, targetHost: string, targetPort: number): Promise<TcpRelay> {
  const relay = await startTcp(targetHost, targetPort)
  t.teardown(relay.close)
  return { port: relay.port, cut: relay.cut, restore: relay.restore }
}

export interface StallingRelay {
  readonly port: number
  /** Connections stay open, nothing is forwarded either way; new connections are accepted and held. */
  stall: () => void
  /** Forwarding resumes on the connections still open, and held ones are connected. */
  heal: () => void
}

/**
 * A relay that can stop answering without closing anything: a blackholed path, a hung server.
 * What a client sent while stalled is never delivered if the client gives up on the connection.
 */
export async function startStallingRelay (t: TapLike, targetHost: string, targetPort: number): Promise<StallingRelay> {
  const relay = await startStalling(targetHost, targetPort)
  t.teardown(relay.close)
  return { port: relay.port, stall: relay.stall, heal: relay.heal }
}
