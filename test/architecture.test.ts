// The layering of docs/design.md, held by a real dependency tool (madge) and by the import
// rules below: no import cycle, no import from a lower layer up, drivers only under src/stores.
import t from 'tap'
import madge from 'madge'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { packageRoot } from '../src/core/package.ts'

const src = join(packageRoot(), 'src')

/** Lower numbers are lower layers; a module may import its own layer and the ones below. */
const LAYERS: Record<string, number> = {
  core: 0,
  observability: 1,
  policy: 2,
  identity: 2,
  config: 3,
  stores: 4,
  limiter: 5,
  admission: 6,
  proxy: 7,
  control: 7,
  cli: 8,
  workers: 8, // src/workers: the cluster primary and its workers' side (composition, like the root)
  '.': 8 // src/server.ts, main.ts, lifecycle.ts, first-run.ts: the composition root
}

function files (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [])
}

function imports (file: string): string[] {
  const text = readFileSync(file, 'utf8')
  return [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'([^']+)'/gm), ...text.matchAll(/^\s*import\s+'([^']+)'/gm)].map((m) => m[1]!)
}

const layerOf = (file: string): string => {
  const rel = relative(src, file)
  return rel.includes('/') ? rel.slice(0, rel.indexOf('/')) : '.'
}

t.test('madge finds no import cycle under src/', async (t) => {
  const graph = await madge(src, { fileExtensions: ['ts'] })
  t.same(graph.circular(), [], 'no cycles')
  t.ok(Object.keys(graph.obj()).length > 50, 'madge read the tree')
})

t.test('no module imports a higher layer', async (t) => {
  const wrong: string[] = []
  for (const file of files(src)) {
    const from = layerOf(file)
    t.ok(from in LAYERS, `${relative(src, file)} lives in a known layer`)
    for (const spec of imports(file)) {
      if (!spec.startsWith('.')) continue
      const to = layerOf(resolve(dirname(file), spec))
      if (LAYERS[to]! > LAYERS[from]!) wrong.push(`${relative(src, file)} imports ${spec} (${from} → ${to})`)
    }
  }
  t.same(wrong, [], 'imports only go down the layers')
})

t.test('the store drivers are imported only under src/stores (and the CLI)', async (t) => {
  const wrong: string[] = []
  for (const file of files(src)) {
    const layer = layerOf(file)
    for (const spec of imports(file)) {
      if ((spec === 'postgres' || spec === 'ioredis') && layer !== 'stores' && layer !== 'cli') wrong.push(`${relative(src, file)} imports ${spec}`)
    }
  }
  t.same(wrong, [])
})

t.test('the limiter depends on the store ports, never on an adapter', async (t) => {
  const wrong = files(join(src, 'limiter')).flatMap((file) => imports(file).filter((s) => s.includes('/stores/')).map((s) => `${relative(src, file)} imports ${s}`))
  t.same(wrong, [])
})

t.test('the whole single-bucket flow stays readable in limiter.ts (under 150 lines)', async (t) => {
  // Issue 11: a reader finds the steps in order in one short file; wiring lives in assemble.ts,
  // each step in steps/. A file that grows past this is asking for a new step module.
  const lines = readFileSync(join(src, 'limiter', 'limiter.ts'), 'utf8').split('\n').length
  t.ok(lines <= 150, `src/limiter/limiter.ts has ${lines} lines`)
})
