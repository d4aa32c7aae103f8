/** Child processes for the benchmark: start, wait for the ready line, measure, stop. */
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
  let buffered = ''
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 30 s:\n${output.join('\n')}`)), 30_000)
    proc.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8')
      let nl
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 1)
        if (output.length < 200) output.push(line)
        try {
          const parsed = JSON.parse(line) as Record<string, unknown>
          if (isReady(parsed)) { clearTimeout(timer); resolve(parsed) }
        } catch { /* not JSON */ }
      }
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
