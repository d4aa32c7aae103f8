/**
 * A child process that announces readiness on stdout (a JSON line), optionally run through a
 * wrapper command (`ip netns exec <ns>`: the wrapper execs the program, so the pid we signal is
 * the program's own). bench/procs.ts's startChild is this with `node <script>`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'

export interface Proc {
  readonly name: string
  readonly proc: ChildProcess
  readonly ready: Record<string, unknown>
  readonly output: string[]
  /** SIGTERM, SIGKILL after 15 s. */
  stop: () => Promise<void>
}

export async function startProcess (name: string, command: string, args: string[], env: NodeJS.ProcessEnv, isReady: (line: Record<string, unknown>) => boolean, readyTimeoutMs = 30_000): Promise<Proc> {
  const proc = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const output: string[] = []
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`${name} did not start within ${readyTimeoutMs} ms:\n${output.join('\n')}`))
    }, readyTimeoutMs)
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (output.length < 200) output.push(line)
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>
        if (isReady(parsed)) { clearTimeout(timer); resolve(parsed) }
      } catch { /* not JSON */ }
    })
    proc.stderr!.on('data', (chunk: Buffer) => { if (output.length < 200) output.push(chunk.toString('utf8')) })
    proc.on('error', (err) => { clearTimeout(timer); reject(err) })
    proc.on('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`${name} exited with ${code ?? signal}:\n${output.join('\n')}`)) })
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
