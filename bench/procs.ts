/** Child processes for the benchmark: start, wait for the ready line, measure, stop. */
import { createInterface } from 'node:readline'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'

export interface Child {
  readonly name: string
  readonly proc: ChildProcess
  readonly ready: Record<string, unknown>
  readonly output: string[]
  stop: () => Promise<void>
}

/**
 * Starts `node <script>` and resolves with the first stdout JSON line that `isReady` accepts
 * (the gateway logs `Starting server on`; the bench's own servers print `{"ready":true}`).
 */
export async function startChild (name: string, script: string, env: NodeJS.ProcessEnv, isReady: (line: Record<string, unknown>) => boolean, nodeArgs: string[] = []): Promise<Child> {
  const proc = spawn(process.execPath, [...nodeArgs, script], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const output: string[] = []
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 30 s:\n${output.join('\n')}`)), 30_000)
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (output.length < 200) output.push(line)
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>
        if (isReady(parsed)) { clearTimeout(timer); resolve(parsed) }
      } catch { /* not JSON */ }
    })
    proc.stderr!.on('data', (chunk: Buffer) => { if (output.length < 200) output.push(chunk.toString('utf8')) })
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited with ${code}:\n${output.join('\n')}`)) })
  })
  proc.removeAllListeners('exit')
  const stop = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGTERM')
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000)
    await exited
    clearTimeout(timer)
  }
  return { name, proc, ready, output, stop }
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
