// `npm run chaos -- --quick` as a test (strict mode): Redis restarted empty, PostgreSQL down,
// one gateway killed, each under load on three gateway processes sharing private stores.
// Fails on any over-admission (strict mode's stated bound is 0, across a switch of who decides
// too: the take-over fence, docs/design.md) or any 5xx / connection error the fault does not explain.
// Needs the build (npm test builds first): the gateways run dist/src/main.js.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runChaos } from '../scripts/chaos/run.ts'

t.test('chaos quick subset, strict mode: over-admission within the stated bound, no unexplained failure', { timeout: 150_000 }, async (t) => {
  const lines: string[] = []
  const { rows, resultsDir } = await runChaos({ quick: true, mode: 'strict', resultsDir: mkdtempSync(join(tmpdir(), 'gw-chaos-test-')), log: (l) => lines.push(l) })
  t.comment(lines.join('\n'))
  t.same(rows.map((r) => r.fault), ['redis-restarted-empty', 'postgres-down-5s', 'gateway-killed'], 'the quick subset ran')
  for (const row of rows) {
    t.ok(row.injected, `${row.fault}: injected (${row.note})`)
    const f = row.figures!
    t.ok(f.allowed > 0 && f.refused > 0, `${row.fault}: ${f.allowed} allowed, ${f.refused} refused`)
    t.ok(f.overAdmission <= row.bound + 1e-6, `${row.fault}: over-admission ${Math.max(0, f.overAdmission).toFixed(3)} (strict mode's stated bound ${row.boundText} = ${row.bound})`)
    t.equal(row.bound, 0, 'strict mode\'s stated bound is 0')
    t.equal(f.failed, 0, `${row.fault}: no unexplained 5xx or connection error`)
  }
  t.ok(rows.find((r) => r.fault === 'gateway-killed')!.figures!.explainedFailures > 0, 'the killed gateway refused connections (and they are explained)')
  t.comment(`results in ${resultsDir}`)
})
