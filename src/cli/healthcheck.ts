/**
 * Container HEALTHCHECK: exits 0 when this container's gateway answers GET /healthz on its
 * control port, 1 otherwise. Runs inside the container, so loopback reaches the control
 * listener whatever CONTROL_HOST is; the port comes from the same configuration the gateway
 * reads. Node instead of curl: the slim runtime image has no curl.
 */
import { loadConfig } from '../config/load.ts'

const TIMEOUT_MS = 3_000

try {
  const { control } = loadConfig()
  const host = control.host === '0.0.0.0' || control.host === '::' ? '127.0.0.1' : control.host
  const res = await fetch(`http://${host.includes(':') ? `[${host}]` : host}:${control.port}/healthz`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  await res.arrayBuffer()
  if (!res.ok) process.stderr.write(`healthcheck: /healthz answered ${res.status}\n`)
  process.exitCode = res.ok ? 0 : 1
} catch (err) {
  process.stderr.write(`healthcheck: ${(err as Error).message}\n`)
  process.exitCode = 1
}
