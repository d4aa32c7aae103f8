// The OpenAPI document: docs/openapi.json is what the code generates (npm run openapi), every
// response is described, the errors are documented, the version is the package's, and the
// examples Swagger UI sends work against the real gateway.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { packageRoot, packageVersion } from '../src/core/package.ts'
import { OPENAPI_FILE, openapiDocument, serialize } from '../scripts/openapi-lib.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

interface Op { parameters?: Array<{ in: string, name: string, schema: { example?: unknown } }>, requestBody?: { content: Record<string, { schema: { example?: unknown } }> }, responses: Record<string, { description: string }>, tags?: string[] }
type Spec = { info: { version: string }, paths: Record<string, Record<string, Op>> }

t.test('docs/openapi.json is up to date (run npm run openapi)', async (t) => {
  const generated = serialize(await openapiDocument())
  const stored = readFileSync(join(packageRoot(), OPENAPI_FILE), 'utf8')
  t.ok(generated === stored, 'docs/openapi.json matches the route schemas; regenerate it with npm run openapi')
})

t.test('served document: described responses, documented errors, the package version; examples work', async (t) => {
  const token = 'an-admin-token-0123456789'
  const gw = await startTestGateway(t, { config: { control: { adminToken: token } } })
  const spec = (await send(gw.controlUrl + '/docs/json')).json<Spec>()
  t.equal(spec.info.version, packageVersion())
  t.notMatch(JSON.stringify(spec), /Default Response/)
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      for (const [code, r] of Object.entries(op.responses)) t.ok(r.description.length > 10, `${method} ${path} ${code} described`)
      if (op.tags?.includes('admin')) for (const code of ['400', '401', '404', '503']) t.ok(op.responses[code], `${method} ${path} documents ${code}`)
      if (op.requestBody !== undefined) t.ok(op.responses['415'], `${method} ${path} documents 415`)
    }
  }
  t.ok(spec.paths['/v1/check']!.post!.responses['503'])

  // What Swagger UI's "Try it out" sends: the examples.
  const checkExample = spec.paths['/v1/check']!.post!.requestBody!.content['application/json']!.schema.example
  const check = await send(gw.controlUrl + '/v1/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(checkExample) })
  t.equal(check.status, 200, `the check example is accepted: ${check.body}`)
  const params = (op: Op): { path: Record<string, string>, query: string } => {
    const path: Record<string, string> = {}
    const query = new URLSearchParams()
    for (const p of op.parameters ?? []) {
      if (p.in === 'path') path[p.name] = String(p.schema.example)
      if (p.in === 'query') query.set(p.name, String(p.schema.example))
    }
    return { path, query: query.toString() }
  }
  const auth = { authorization: `Bearer ${token}` }
  for (const [method, template] of [['get', '/v1/buckets/{key}'], ['put', '/v1/overrides/{key}'], ['delete', '/v1/overrides/{key}'], ['delete', '/v1/buckets/{key}']] as const) {
    const op = spec.paths[template]![method]!
    const { path, query } = params(op)
    const url = gw.controlUrl + template.replace(/\{(\w+)\}/g, (_m, name: string) => encodeURIComponent(path[name]!)) + (query === '' ? '' : '?' + query)
    const body = op.requestBody?.content['application/json']?.schema.example
    const r = await send(url, { method: method.toUpperCase(), ...(body === undefined ? { headers: auth } : { headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body) }) })
    t.equal(r.status, 200, `${method.toUpperCase()} ${template} with the examples: ${r.body}`)
  }
})
