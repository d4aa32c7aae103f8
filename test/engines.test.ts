// package.json's engines is true: every runtime dependency in the lock file supports the oldest
// Node the package claims (no EBADENGINE warning on `npm install` there).
import t from 'tap'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { packageRoot } from '../src/core/package.ts'

const semver = createRequire(import.meta.url)('semver') as { minVersion: (range: string) => { version: string } | null, satisfies: (v: string, range: string) => boolean }
const read = (file: string): any => JSON.parse(readFileSync(join(packageRoot(), file), 'utf8'))

t.test('runtime dependencies support the oldest Node in engines', async (t) => {
  const claimed = read('package.json').engines.node as string
  const oldest = semver.minVersion(claimed)!.version
  t.ok(semver.satisfies(process.version, claimed), `this Node (${process.version}) is in the claimed range ${claimed}`)
  const packages = read('package-lock.json').packages as Record<string, { dev?: boolean, engines?: { node?: string } }>
  const refusing = Object.entries(packages)
    .filter(([path, p]) => path !== '' && p.dev !== true && p.engines?.node !== undefined && !semver.satisfies(oldest, p.engines.node))
    .map(([path, p]) => `${path} wants node ${p.engines!.node}`)
  t.same(refusing, [], `every runtime dependency runs on Node ${oldest}`)
})
