/**
 * `npm run scenarios`: the original test runner, against a running gateway.
 *   TARGET (default http://localhost:8080/)  SCENARIO_USER (default user_123)
 * Exits 1 when any expectation fails.
 */
import { fetchErrorCause, SCENARIOS, unreachable } from './scenarios-lib.ts'

const target = process.env.TARGET ?? 'http://localhost:8080/'
const base = process.env.SCENARIO_USER ?? 'user_123'
const run = Date.now().toString(36)

console.log('🚀 Rate Limiter Test Suite')
console.log(`Target: ${target}`)
console.log(`User: ${base} (each scenario uses ${base}-${run}-<scenario>, so every run starts fresh)`)

// One probe first: an unreachable target is reported once, with its cause, not six times.
const down = await unreachable(target)
if (down !== null) {
  console.log(`\n💥 Cannot reach ${target}: ${down}\n   Is the gateway running (npm start)? Set TARGET to its proxy URL.`)
  process.exit(1)
}

let failures = 0
let index = 0
for (const [id, scenario] of SCENARIOS) {
  index++
  let result
  try {
    result = await scenario(target, `${base}-${run}-${id}`)
  } catch (err) {
    console.log(`\n========== TEST ${index}: ${id} ==========\n💥 ${fetchErrorCause(err)}`)
    failures++
    continue
  }
  console.log(`\n========== TEST ${index}: ${result.name} ==========`)
  for (const line of result.lines) console.log(line)
  for (const e of result.expectations) {
    if (!e.ok) failures++
    console.log(`${e.ok ? '✅' : '❌'} ${e.what}: expected ${e.expected}, got ${e.actual}`)
  }
}
console.log(failures === 0 ? '\n✅ All tests done' : `\n❌ ${failures} expectation(s) failed`)
process.exitCode = failures === 0 ? 0 : 1
