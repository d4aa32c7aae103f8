/**
 * The fault-and-overshoot suite's checker: pure functions over a record of requests, no I/O.
 *
 * Times are milliseconds on ONE clock, the load generator's (monotonic): a request's decision
 * happened somewhere in [sentMs, answeredMs] on that clock. The stores' clocks (which refill the
 * buckets) may disagree with it by a little: `clockUncertaintyMs` (u) widens every request's
 * decision interval to [sentMs − u, answeredMs + u].
 *
 * Over-admission, attribution "must": an allowed request counts in a window [s, e] only if its
 * whole widened decision interval lies inside the window, i.e. it was certainly decided in it.
 * A token bucket guarantees, for EVERY window, allowed cost ≤ capacity + rate × (e − s); so any
 * window whose certain allowances exceed that is proven over-admission, never an artefact of
 * latency. (Counting a request in every window it *could* have been decided in would charge the
 * limiter for its own latency: a perfect limiter would show rate × latency of excess.) The
 * extremal windows start at some request's widened send time and end at some request's widened
 * answer time, so checking all those pairs is exact over all windows.
 *
 * Wrong refusals: a refusal is wrong if a reference bucket replayed from the allowed history
 * holds, at the refusal's earliest possible decision time, at least its cost plus a margin of
 * rate × u, even when every allowance is charged at the time within its interval that leaves
 * the fewest tokens (the lowest level the history allows: charges as late as possible, counting
 * those that may still have been in flight).
 */

export interface RequestRecord {
  caller: string
  gateway: number
  sentMs: number
  answeredMs: number
  /** HTTP status; 0 for a connection error or a client timeout. */
  status: number
  /** X-Data-Source, '' when absent. */
  source: string
  cost: number
  /** Connection error code when status is 0. */
  error?: string
}

export interface Limits { capacity: number, ratePerSecond: number }

export interface CheckOptions extends Limits {
  clockUncertaintyMs: number
  /** Statuses that mean "allowed" (forwarded to the upstream). */
  allowedStatuses?: number[]
}

export interface OverAdmission {
  /** Largest cost-weighted excess over capacity + rate × T, ≤ 0 when the bound holds. */
  excess: number
  windowStartMs: number
  windowEndMs: number
  allowedInWindow: number
}

const DEFAULT_ALLOWED = [200, 201, 204]

function isAllowed (r: RequestRecord, o: CheckOptions): boolean {
  return (o.allowedStatuses ?? DEFAULT_ALLOWED).includes(r.status)
}

/** Exact over all windows, for one caller's records. */
export function overAdmission (records: RequestRecord[], o: CheckOptions): OverAdmission {
  const u = o.clockUncertaintyMs
  const rate = o.ratePerSecond / 1000
  const allowed = records.filter((r) => isAllowed(r, o)).map((r) => ({ a: r.sentMs - u, b: r.answeredMs + u, c: r.cost }))
  const best: OverAdmission = { excess: -o.capacity, windowStartMs: NaN, windowEndMs: NaN, allowedInWindow: 0 }
  const byEnd = [...allowed].sort((x, y) => x.b - y.b)
  const starts = [...new Set(allowed.map((x) => x.a))].sort((x, y) => x - y)
  for (const s of starts) {
    let sum = 0
    for (const r of byEnd) {
      if (r.a < s) continue
      sum += r.c
      const excess = sum - (o.capacity + rate * (r.b - s))
      if (excess > best.excess) Object.assign(best, { excess, windowStartMs: s, windowEndMs: r.b, allowedInWindow: sum })
    }
  }
  return best
}

/**
 * Refusals (429) that the reference bucket says the caller could pay, with the margin.
 * The bucket's level at t is min(C, min over s ≤ t of C + rate (t − s) − charges in [s, t]). For
 * its lowest value the history allows, every allowance that could have been decided in [s, T]
 * (its widened interval [a, b] meets it: a ≤ T and b ≥ s) is charged, where t and T are the
 * refusal's earliest and latest decision times; the extremal s are the allowances' b.
 */
export function wrongRefusals (records: RequestRecord[], o: CheckOptions): RequestRecord[] {
  const u = o.clockUncertaintyMs
  const rate = o.ratePerSecond / 1000
  const allowed = records.filter((r) => isAllowed(r, o)).map((r) => ({ a: r.sentMs - u, b: r.answeredMs + u, c: r.cost })).sort((x, y) => y.b - x.b)
  const margin = rate * u
  return records.filter((r) => r.status === 429).filter((r) => {
    const t = r.sentMs - u
    const latest = r.answeredMs + u
    let level = o.capacity
    let charged = 0
    for (const x of allowed) { // latest b first: the charges in [x.b, latest] accumulate
      if (x.a > latest) continue
      charged += x.c
      level = Math.min(level, o.capacity + rate * (t - x.b) - charged)
    }
    return level >= r.cost + margin
  })
}

export function percentile (values: number[], p: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

export interface FaultWindow { startMs: number, endMs: number }

export interface PhaseFigures {
  requests: number
  allowed: number
  refused: number
  /** Largest over-admission of any caller (cost units, ≤ 0 when the bound holds). */
  overAdmission: number
  overAdmittedCaller: string | null
  overAdmissionWindow: [number, number] | null
  wrongRefusals: number
  /** 5xx and connection errors that `explained` does not account for. */
  failed: number
  /** Failures the fault explains (a killed gateway's refused connections, FAIL_MODE=closed 503s). */
  explainedFailures: number
  p99HealthyMs: number
  p99FaultMs: number
  sources: Record<string, number>
}

/**
 * Every figure of one fault phase. `healthy` is the window before the fault (for the latency
 * baseline), `fault` the fault's window; `explained` says which failures the fault or the fail
 * mode accounts for.
 */
export function checkPhase (records: RequestRecord[], o: CheckOptions, healthy: FaultWindow, fault: FaultWindow, explained: (r: RequestRecord) => boolean): PhaseFigures {
  const byCaller = new Map<string, RequestRecord[]>()
  for (const r of records) {
    const list = byCaller.get(r.caller) ?? []
    list.push(r)
    byCaller.set(r.caller, list)
  }
  let worst: OverAdmission | null = null
  let worstCaller: string | null = null
  let wrong = 0
  for (const [caller, list] of byCaller) {
    const over = overAdmission(list, o)
    if (worst === null || over.excess > worst.excess) { worst = over; worstCaller = caller }
    wrong += wrongRefusals(list, o).length
  }
  const failures = records.filter((r) => r.status === 0 || r.status >= 500)
  const explainedFailures = failures.filter(explained).length
  const inWindow = (w: FaultWindow) => (r: RequestRecord): boolean => r.sentMs >= w.startMs && r.sentMs < w.endMs && r.status !== 0
  const sources: Record<string, number> = {}
  for (const r of records) sources[r.source || '-'] = (sources[r.source || '-'] ?? 0) + 1
  const excess = worst === null ? 0 : worst.excess
  return {
    requests: records.length,
    allowed: records.filter((r) => isAllowed(r, o)).length,
    refused: records.filter((r) => r.status === 429).length,
    overAdmission: excess,
    overAdmittedCaller: excess > 0 ? worstCaller : null,
    overAdmissionWindow: excess > 0 && worst !== null ? [worst.windowStartMs, worst.windowEndMs] : null,
    wrongRefusals: wrong,
    failed: failures.length - explainedFailures,
    explainedFailures,
    p99HealthyMs: percentile(records.filter(inWindow(healthy)).map((r) => r.answeredMs - r.sentMs), 99),
    p99FaultMs: percentile(records.filter(inWindow(fault)).map((r) => r.answeredMs - r.sentMs), 99),
    sources
  }
}
