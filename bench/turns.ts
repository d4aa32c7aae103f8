/**
 * Servers measured taking turns: each round runs every server once under the same load, the
 * order reversed every other round, so a machine whose speed drifts loads them alike and a
 * ratio taken within a round compares the servers, not the moments (bench/run.ts row T,
 * bench/allow-listed.ts).
 */
import { sequentialLatency, type LatencyResult } from './latency.ts'
import { saturate, type LoadResult, type Workload } from './load.ts'
import { cpuSeconds } from './procs.ts'

export interface TurnServer {
  readonly id: string
  /** The process whose CPU is charged to the server. */
  readonly pid: number
  readonly url: string
  readonly workload: Workload
}

/** One server's turn: the load's result and the server's CPU µs per request. */
export interface Turn { readonly result: LoadResult, readonly cpuUs: number }

/** `rounds` rounds of `seconds` per server; each round is a map from server id to its turn. */
export async function takeTurns (servers: readonly TurnServer[], rounds: number, seconds: number, connections: number): Promise<Array<Map<string, Turn>>> {
  const out: Array<Map<string, Turn>> = []
  for (let r = 0; r < rounds; r++) {
    const round = new Map<string, Turn>()
    for (const s of r % 2 === 0 ? servers : [...servers].reverse()) {
      const before = cpuSeconds(s.pid)
      const result = await saturate(s.url, s.workload, connections, seconds)
      round.set(s.id, { result, cpuUs: ((cpuSeconds(s.pid) - before) * 1e6) / result.requests })
    }
    out.push(round)
  }
  return out
}

/** A server of the latency turns: one connection, sequential requests over `callers` callers. */
export interface LatencyTurnServer { readonly id: string, readonly url: string, readonly prefix: string, readonly callers: number }

/**
 * The same for one-connection latency: each round times `requests` sequential requests per
 * server (after `warmup` untimed ones on the same connection), the order reversed every other
 * round, so a microsecond difference between two servers is taken within one round.
 */
export async function takeLatencyTurns (servers: readonly LatencyTurnServer[], rounds: number, requests: number, warmup: number): Promise<Array<Map<string, LatencyResult>>> {
  const out: Array<Map<string, LatencyResult>> = []
  for (let r = 0; r < rounds; r++) {
    const round = new Map<string, LatencyResult>()
    for (const s of r % 2 === 0 ? servers : [...servers].reverse()) {
      round.set(s.id, await sequentialLatency(s.url, s.prefix, s.callers, requests, warmup))
    }
    out.push(round)
  }
  return out
}

export function median (values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}
