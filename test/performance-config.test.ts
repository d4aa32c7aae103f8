// The gateway's Node heap flags (docs/performance.md, "Memory") live in two places, npm start
// and the image's CMD, and the benchmark reads npm start's: they must not drift apart.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { packageRoot } from '../src/core/package.ts'

t.test('npm start and the Dockerfile start the gateway with the same Node flags', async (t) => {
  const root = packageRoot()
  const start = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start!
  const fromStart = /^(?:exec\s+)?node\s+(.*?)\s*dist\/src\/main\.js$/.exec(start)?.[1]?.split(/\s+/) ?? []
  const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(readFileSync(join(root, 'Dockerfile'), 'utf8'))?.[1]
  const fromImage = (JSON.parse(cmd ?? '[]') as string[]).slice(1, -1)
  t.ok(fromStart.includes('--max-semi-space-size=8'), `npm start: ${start}`)
  t.same(fromImage, fromStart)
})
