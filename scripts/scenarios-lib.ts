/**
 * The original test runner's six scenarios (seed/original-spec.txt), run against a live
 * gateway. Used by `npm run scenarios` (report for a person) and by test/scenarios.test.ts
 * (assertions). Each scenario uses its own caller id, so no scenario waits for another's
 * bucket to refill and every run starts from fresh buckets.
 */
export interface Outcome { status: number, source: string, retryAfter: string | null }

export interface Expectation { what: string, expected: string, actual: string, ok: boolean }

export interface ScenarioResult {
  name: string
  lines: string[]
  outcomes: Outcome[]
  expectations: Expectation[]
}

/** fetch's "fetch failed" with its cause, e.g. "connect ECONNREFUSED 127.0.0.1:8080". */
export function fetchErrorCause (err: unknown): string {
  const e = err as Error & { cause?: Error & { code?: string } }
  const cause = e.cause
  if (cause === undefined) return e.message
  return cause.message.includes(cause.code ?? '\0') || cause.code === undefined ? cause.message : `${cause.code}: ${cause.message}`
}

/** null when the target answers at all (any status), else why it cannot be reached. */
export async function unreachable (target: string): Promise<string | null> {
  try {
    const res = await fetch(target, { method: 'HEAD', signal: AbortSignal.timeout(5_000) })
    await res.arrayBuffer()
    return null
  } catch (err) {
    return fetchErrorCause(err)
  }
}

const ICON: Record<string, string> = { 'new-user': '🆕 new-user', redis: '🔴 redis   ', postgres: '🐘 postgres' }

async function hit (target: string, user: string, header = 'x-user-id'): Promise<Outcome> {
  const res = await fetch(target, { headers: { [header]: user } })
  await res.arrayBuffer()
  return { status: res.status, source: res.headers.get('x-data-source') ?? '?', retryAfter: res.headers.get('retry-after') }
}

function describe (o: Outcome): string {
  const verdict = o.status === 429 ? '❌ BLOCKED' : o.status < 400 ? '✅ ALLOWED' : `⚠️  ${o.status}`
  return `${verdict} [source: ${ICON[o.source] ?? o.source}]${o.retryAfter !== null ? ` (retry after ${o.retryAfter}s)` : ''}`
}

function expect (what: string, expected: unknown, actual: unknown): Expectation {
  return { what, expected: String(expected), actual: String(actual), ok: String(expected) === String(actual) }
}

const allowed = (os: Outcome[]): number => os.filter((o) => o.status < 400).length
const blocked = (os: Outcome[]): number => os.filter((o) => o.status === 429).length

/** Sends requests until one is refused; returns when the client saw that refusal. */
async function exhaust (target: string, user: string, limit = 1000): Promise<number> {
  for (let i = 0; i < limit; i++) {
    if ((await hit(target, user)).status === 429) return performance.now()
  }
  throw new Error(`bucket of ${user} was not exhausted after ${limit} requests`)
}

/** Waits until an absolute performance.now() time; never returns early. */
async function until (atMs: number): Promise<void> {
  for (let left = atMs - performance.now(); left > 0; left = atMs - performance.now()) {
    await new Promise((resolve) => setTimeout(resolve, Math.max(1, left)))
  }
}

export async function cacheVsDb (target: string, user: string): Promise<ScenarioResult> {
  const outcomes: Outcome[] = []
  const lines: string[] = []
  const expected = ['new-user', 'redis', 'redis']
  for (let i = 0; i < 3; i++) {
    const o = await hit(target, user)
    outcomes.push(o)
    lines.push(`Request ${i + 1} → [source: ${ICON[o.source] ?? o.source}] (expected: ${expected[i]})`)
  }
  return { name: 'CACHE VS DB (new user flow)', lines, outcomes, expectations: [expect('sources', expected.join(','), outcomes.map((o) => o.source).join(','))] }
}

export async function burst (target: string, user: string, count = 15): Promise<ScenarioResult> {
  const outcomes: Outcome[] = []
  const started = performance.now()
  for (let i = 0; i < count; i++) outcomes.push(await hit(target, user))
  // At 1 token/s, a burst that itself lasts s seconds has earned up to floor(s) more tokens
  // by its end: on a slow machine that is correct refill, not a leak.
  const refilled = Math.floor((performance.now() - started) / 1000)
  const lines = outcomes.map((o, i) => `Request ${i + 1} → ${describe(o)}`)
  lines.push(`Summary: ${allowed(outcomes)} allowed, ${blocked(outcomes)} blocked`)
  const expectations = refilled === 0
    ? [
        expect('allowed', 10, allowed(outcomes)),
        expect('blocked', count - 10, blocked(outcomes)),
        expect('first 10 allowed, then blocked', 'true', outcomes.every((o, i) => (i < 10) === (o.status < 400)))
      ]
    : [
        expect(`first 10 allowed (burst took over ${refilled} s)`, 'true', outcomes.slice(0, 10).every((o) => o.status < 400)),
        expect(`at most ${10 + refilled} allowed`, 'true', allowed(outcomes) <= 10 + refilled)
      ]
  return { name: `BURST (${count} requests instantly)`, lines, outcomes, expectations }
}

export async function refill (target: string, user: string, waitSeconds = 3): Promise<ScenarioResult> {
  const lines = ['Exhausting tokens...']
  const exhaustStarted = performance.now()
  const emptiedAt = await exhaust(target, user)
  lines.push('✅ Confirmed exhausted', `Waiting ${waitSeconds} seconds for refill...`)
  await until(emptiedAt + waitSeconds * 1000)
  const outcomes: Outcome[] = []
  const started = performance.now()
  for (let i = 0; i < waitSeconds + 2; i++) outcomes.push(await hit(target, user))
  // At 1 token/s the refused bucket still held what emptying it earned (< its duration), and
  // the retries earn their own duration: on a fast machine both are milliseconds and exactly
  // `waitSeconds` pass; a slow machine may legitimately earn whole tokens more.
  const earned = Math.floor((emptiedAt - exhaustStarted + performance.now() - started) / 1000)
  outcomes.forEach((o, i) => lines.push(`Request ${i + 1} → ${describe(o)}`))
  lines.push(`Got ${allowed(outcomes)} tokens after ${waitSeconds}s wait (expected ${waitSeconds})`)
  const expectation = earned === 0
    ? expect('allowed after the wait', waitSeconds, allowed(outcomes))
    : expect(`allowed after the wait: ${waitSeconds} to ${waitSeconds + earned} (emptying and retrying took over ${earned} s)`, 'true',
      allowed(outcomes) >= waitSeconds && allowed(outcomes) <= waitSeconds + earned)
  return { name: `REFILL (exhaust → wait ${waitSeconds}s → retry)`, lines, outcomes, expectations: [expectation] }
}

export async function concurrent (target: string, user: string, count = 10): Promise<ScenarioResult> {
  const outcomes = await Promise.all(Array.from({ length: count }, () => hit(target, user)))
  const lines = outcomes.map((o, i) => `Request ${i + 1} → ${describe(o)}`)
  lines.push(`Summary: ${allowed(outcomes)} allowed, ${blocked(outcomes)} blocked`)
  return { name: `CONCURRENT (${count} requests at once)`, lines, outcomes, expectations: [expect('allowed', Math.min(10, count), allowed(outcomes))] }
}

export async function multipleUsers (target: string, user: string): Promise<ScenarioResult> {
  const names = ['alice', 'bob', 'charlie']
  const lines: string[] = []
  // Empty alice's bucket first: bob and charlie must not notice.
  await exhaust(target, `${user}-alice`)
  lines.push(`${user}-alice exhausted`)
  const outcomes: Outcome[] = []
  for (const n of names) {
    const o = await hit(target, `${user}-${n}`)
    outcomes.push(o)
    lines.push(`${n} → ${describe(o)}`)
  }
  return {
    name: 'MULTIPLE USERS (independent buckets)',
    lines,
    outcomes,
    expectations: [expect('alice blocked, bob and charlie allowed', '429,200,200', outcomes.map((o) => (o.status < 400 ? 200 : o.status)).join(','))]
  }
}

export async function slowDrip (target: string, user: string, seconds = 5): Promise<ScenarioResult> {
  const lines = ['Exhausting tokens first...']
  const emptiedAt = await exhaust(target, user)
  const outcomes: Outcome[] = []
  for (let i = 1; i <= seconds; i++) {
    await until(emptiedAt + i * 1000)
    const o = await hit(target, user)
    outcomes.push(o)
    lines.push(`Request ${i} → ${describe(o)}`)
  }
  return { name: `SLOW DRIP (1 req/sec for ${seconds} secs, after emptying)`, lines, outcomes, expectations: [expect('allowed', seconds, allowed(outcomes))] }
}

export const SCENARIOS = [
  ['cache-vs-db', cacheVsDb],
  ['burst', burst],
  ['refill', refill],
  ['concurrent', concurrent],
  ['multiple-users', multipleUsers],
  ['slow-drip', slowDrip]
] as const
