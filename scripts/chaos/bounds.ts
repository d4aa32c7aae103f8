/**
 * Each consistency mode's stated over-admission bound per fault, and whether the gateway being
 * tested knows the mode at all. Pure: the runner (run.ts) and test/chaos-bounds.test.ts use it.
 *
 * strict (PostgreSQL decides; Redis atomically while PostgreSQL is away): 0, across a switch of
 *   who decides too: Redis decides a bucket it takes over only after the take-over fence, by
 *   when every PostgreSQL allowance another gateway was committing has been charged to it
 *   (docs/design.md, "The take-over fence"). With the fence off (FALLBACK_TAKEOVER_FENCE_MS=0)
 *   one request more per other gateway at a switch.
 * write-behind (the gateways decide in Redis and write PostgreSQL every sync interval): when
 *   Redis loses data (killed, restarted empty) what was spent since the last sync is forgotten,
 *   so a caller can spend once more what it spent in one sync interval, at most capacity +
 *   rate × interval; 0 for every other fault.
 *   While the gateways disagree on whether Redis answers (one gateway cut off from Redis; a
 *   paused Redis that each gateway's timeouts give up on at a different moment), some decide in
 *   PostgreSQL and others in Redis, each from its own copy (PostgreSQL's lags by the sync
 *   interval, Redis's never sees PostgreSQL's decisions until it is seeded again), so a caller
 *   can spend up to one more bucket for that time: C + r·T (docs/design.md, "The write-behind
 *   mode", its weaker cases).
 * Both: a fault that leaves one gateway with neither store (FAIL_MODE=local) adds that gateway's
 *   in-process share, capacity/N refilled at rate/N, unshared while it is cut off and until it
 *   finds a store again: one probe interval after a relay's reset, and after a silent partition
 *   (netns) also TCP's retransmission back-off, up to 3.2 s after a 5 s silence (RTO 200 ms
 *   doubling: the retry that finds the path restored comes that late).
 */

export const MODE_NAMES = ['strict', 'write-behind'] as const
export type ModeName = typeof MODE_NAMES[number]

export function isModeName (s: string): s is ModeName {
  return (MODE_NAMES as readonly string[]).includes(s)
}

export interface BoundSetting {
  capacity: number
  ratePerSecond: number
  gateways: number
  /** write-behind's SYNC_INTERVAL_MS. */
  syncIntervalMs: number
  /** fallback.probeIntervalMs: how soon a cut-off gateway finds a store again. */
  probeIntervalMs: number
  /** FALLBACK_TAKEOVER_FENCE_MS=0: Redis decides a take-over at once (strict: one request per other gateway at a switch). */
  fenceOff?: boolean
}

export interface FaultTraits {
  /** Both stores unreachable from one gateway: the local fail mode's share applies. */
  localFailMode?: boolean
  /** Redis's data is lost (killed, restarted empty): write-behind forgets one sync interval. */
  redisLosesData?: boolean
  /** Some gateways reach Redis while others do not: write-behind decides in both stores at once. */
  redisSplit?: boolean
  /** Packets dropped silently (netns), not connections reset: reconnecting waits for TCP's retries. */
  silentPartition?: boolean
}

/** The longest TCP retransmission wait after a 5 s silent partition (RTO 200 ms doubling: 0.2+0.4+0.8+1.6 = 3 s, then 3.2 s). */
export const TCP_RETRY_SLACK_MS = 3200

export interface StatedBound {
  /** Cost units of over-admission the mode allows for this fault. */
  bound: number
  /** The same as a formula, for the table. */
  text: string
}

function fmt (n: number): string {
  return String(Math.round(n * 1000) / 1000)
}

/** The mode's stated bound for a fault that lasted `faultMs`. */
export function statedBound (mode: ModeName, fault: FaultTraits, faultMs: number, s: BoundSetting): StatedBound {
  const parts: StatedBound[] = []
  if (mode === 'strict') {
    if (s.fenceOff === true) {
      const others = s.gateways - 1
      parts.push({ bound: others, text: `${others} (switch, no fence)` })
    }
  } else {
    if (fault.redisLosesData === true) {
      parts.push({ bound: s.capacity + s.ratePerSecond * s.syncIntervalMs / 1000, text: `C + r·${fmt(s.syncIntervalMs / 1000)} s (one sync interval)` })
    }
    if (fault.redisSplit === true) {
      parts.push({ bound: s.capacity + s.ratePerSecond * faultMs / 1000, text: 'C + r·T (split between the stores)' })
    }
  }
  if (fault.localFailMode === true) {
    const n = s.gateways
    const slack = s.probeIntervalMs + (fault.silentPartition === true ? TCP_RETRY_SLACK_MS : 0)
    parts.push({
      bound: s.capacity / n + (s.ratePerSecond / n) * (faultMs + slack) / 1000,
      text: `C/${n} + r/${n}·(T+${fmt(slack / 1000)} s)`
    })
  }
  if (parts.length === 0) return { bound: 0, text: '0' }
  return { bound: parts.reduce((a, p) => a + p.bound, 0), text: parts.map((p) => p.text).join(' + ') }
}

/** The gateway's environment table: [variable, config path, kind] (src/config/load.ts). */
export type Environment = ReadonlyArray<readonly [string, string, string]>
/** Loads the gateway's configuration from an environment; throws on an invalid value. */
export type LoadConfig = (env: Record<string, string>) => unknown

export type ModeSupport = { ok: true, env: Record<string, string> } | { ok: false, reason: string }

function at (tree: unknown, path: string): unknown {
  let node = tree
  for (const key of path.split('.')) {
    if (typeof node !== 'object' || node === null) return undefined
    node = (node as Record<string, unknown>)[key]
  }
  return node
}

/**
 * Whether the gateway's configuration knows `mode`, and the environment that selects it.
 * strict is what a gateway without CONSISTENCY does anyway, so it is always there (CONSISTENCY
 * is passed only if the gateway reads it). write-behind needs CONSISTENCY and SYNC_INTERVAL_MS
 * in the environment table, and a configuration that accepts both and carries the values.
 */
export function modeSupport (mode: ModeName, environment: Environment, load: LoadConfig, syncIntervalMs: number): ModeSupport {
  const path = (name: string): string | undefined => environment.find(([n]) => n === name)?.[1]
  const consistency = path('CONSISTENCY')
  if (mode === 'strict') return { ok: true, env: consistency === undefined ? {} : { CONSISTENCY: 'strict' } }
  if (consistency === undefined) return { ok: false, reason: `the gateway's configuration does not read CONSISTENCY (src/config/load.ts ENVIRONMENT): ${mode} is not built on this branch` }
  const sync = path('SYNC_INTERVAL_MS')
  if (sync === undefined) return { ok: false, reason: 'the gateway reads CONSISTENCY but not SYNC_INTERVAL_MS: the stated bound needs the sync interval' }
  const env = { CONSISTENCY: mode, SYNC_INTERVAL_MS: String(syncIntervalMs) }
  let config: unknown
  try {
    config = load(env)
  } catch (err) {
    return { ok: false, reason: `the gateway's configuration refuses ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}: ${(err as Error).message.replace(/\s+/g, ' ').trim()}` }
  }
  if (at(config, consistency) !== mode) return { ok: false, reason: `CONSISTENCY=${mode} loads as ${JSON.stringify(at(config, consistency))} at ${consistency}` }
  if (at(config, sync) !== syncIntervalMs) return { ok: false, reason: `SYNC_INTERVAL_MS=${syncIntervalMs} loads as ${JSON.stringify(at(config, sync))} at ${sync}` }
  return { ok: true, env }
}
