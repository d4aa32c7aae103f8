/**
 * The control API's OpenAPI document as /docs/json serves it, built from the route schemas
 * with the default configuration (and the admin routes on). No store is touched: the routes
 * are registered, never called, so the stores' places are left empty.
 */
import { loadConfig } from '../src/config/load.ts'
import { buildControl } from '../src/control/app.ts'
import type { ControlDeps } from '../src/control/deps.ts'
import { createLogger } from '../src/observability/log.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { Holder } from '../src/policy/holder.ts'
import { buildRuntime } from '../src/admission/runtime.ts'

export async function openapiDocument (): Promise<Record<string, unknown>> {
  const config = loadConfig({ env: {}, overrides: { control: { adminToken: 'documentation-only-token' } } })
  const unused = null as never // registered routes, never called
  const deps: ControlDeps = {
    config,
    limiter: unused,
    store: unused,
    cache: unused,
    overrides: unused,
    metrics: new Metrics(),
    log: createLogger('silent'),
    runtime: new Holder(buildRuntime(config, 'http://127.0.0.1:1', 1))
  }
  const app = await buildControl(deps)
  await app.ready()
  const doc = app.swagger() as unknown as Record<string, unknown>
  await app.close()
  return doc
}

export const OPENAPI_FILE = 'docs/openapi.json'

export function serialize (doc: Record<string, unknown>): string {
  return JSON.stringify(doc, null, 2) + '\n'
}
