/** Child processes for the benchmark: start, wait for the ready line, measure, stop. */
import { readFileSync } from 'node:fs'
import { startProcess, type Proc } from '../scripts/lib/child.ts'

export type Child = Proc

/**
 * Starts `node <script>` and resolves with the first stdout JSON line that `isReady` accepts
 * (the gateway logs `Starting server on`; the bench's own servers print `{"ready":true}`).
 */
export async function startChild (name: string, script: string, env: NodeJS.ProcessEnv, isReady: (line: Record<string, unknown>) => boolean, nodeArgs: string[] = []): Promise<Child> {
  return await startProcess(name, process.execPath, [...nodeArgs, script], env, isReady)
}

/** Resident set size of a process, from /proc (Linux); NaN elsewhere. */
export function rssBytes (pid: number | undefined): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const m = /VmRSS:\s+(\d+) kB/.exec(status)
    return m === null ? NaN : Number(m[1]) * 1024
  } catch {
    return NaN
  }
}

/** CPU seconds (user + system) a process has used so far; 0 when it is gone. */
export function cpuSeconds (pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which may contain spaces, start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
  } catch {
    return 0
  }
}

/** Busy and total CPU seconds of the whole machine so far, from /proc/stat. */
export function machineSeconds (): { busy: number, total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!
    const v = line.trim().split(/\s+/).slice(1).map(Number)
    const idle = (v[3] ?? 0) + (v[4] ?? 0)
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
    return { busy: (total - idle) / CLOCK_TICKS, total: total / CLOCK_TICKS }
  } catch {
    return { busy: NaN, total: NaN }
  }
}

/** USER_HZ: 100 on every Linux we run on (getconf CLK_TCK). */
const CLOCK_TICKS = 100
