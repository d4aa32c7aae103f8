// SIGTERM to a gateway process under load: every request it accepted completes (no 5xx, no
// cut-off response), requests arriving afterwards are refused at the door, and it exits 0.
import { request } from 'node:http'
import t from 'tap'
import { spawnGateway } from './helpers/gateway.ts'
import { waitFor } from './helpers/http.ts'
import { createRedisPrefix, createTestDatabase } from './helpers/stores.ts'
import { startUpstream } from './helpers/upstream.ts'

interface Outcome { id: number, status: number, body: string, error: string | null }

/** One request on its own connection, so "accepted" is unambiguous: no keep-alive reuse races. */
function once (url: string, user: string): Promise<Omit<Outcome, 'id'>> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, headers: { 'x-user-id': user } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, error: null }))
      res.on('error', (err) => resolve({ status: res.statusCode ?? 0, body, error: (err as NodeJS.ErrnoException).code ?? err.message }))
    })
    req.on('error', (err) => resolve({ status: 0, body: '', error: (err as NodeJS.ErrnoException).code ?? err.message }))
    req.end()
  })
}

t.test('SIGTERM under load: every accepted request completes, none gets a 5xx, exit code 0', async (t) => {
  const upstream = await startUpstream(t)
  const gw = await spawnGateway(t, {
    DATABASE_URL: await createTestDatabase(t),
    REDIS_KEY_PREFIX: createRedisPrefix(t),
    UPSTREAM_URL: upstream.url,
    // Some callers get 429s too: those are answers, not failures.
    RATE_LIMIT_CAPACITY: '10',
    RATE_LIMIT_REFILL_PER_SECOND: '2'
  })
  const outcomes: Outcome[] = []
  let nextId = 0
  let refused = false
  // 30 clients in a loop until the door closes, each request held 300 ms by the upstream:
  // 24 callers of their own, within their limits, and 6 clients sharing one hot caller that
  // runs into its limit.
  const clients = Array.from({ length: 30 }, async (_, c) => {
    while (!refused) {
      const id = nextId++
      const outcome = { id, ...await once(`${gw.proxyUrl}/slow/300?id=${id}`, c < 24 ? `caller-${c}` : 'hot') }
      outcomes.push(outcome)
      if (outcome.error === 'ECONNREFUSED') refused = true
      if (outcome.status === 429) await new Promise((resolve) => setTimeout(resolve, 50)) // a polite client backs off
    }
  })
  await waitFor(() => upstream.received.length >= 120 && outcomes.some((o) => o.status === 429), { timeoutMs: 20_000, what: 'steady load' })
  const inFlightAtSignal = nextId - outcomes.length
  const exitCode = await gw.stop('SIGTERM')
  await Promise.all(clients)

  const forwarded = new Set(upstream.received.map((r) => Number(new URL(r.url, 'http://x').searchParams.get('id'))))
  const answered = outcomes.filter((o) => o.error === null)
  const notAccepted = outcomes.filter((o) => o.error !== null && o.status === 0 && !forwarded.has(o.id))
  const broken = outcomes.filter((o) => !answered.includes(o) && !notAccepted.includes(o))
  t.comment(`${outcomes.length} requests: ${answered.length} answered, ${notAccepted.length} refused at the door; ${inFlightAtSignal} in flight at SIGTERM`)
  t.equal(exitCode, 0, 'exit code 0')
  t.ok(inFlightAtSignal >= 10, 'requests were in flight when the signal arrived')
  t.same(broken, [], 'no accepted request was cut off')
  t.same(answered.filter((o) => o.status >= 500), [], 'no 5xx')
  t.same(answered.filter((o) => o.status !== 200 && o.status !== 429), [], 'every answer is 200 or 429')
  t.same(answered.filter((o) => o.status === 200 && o.body !== 'slow'), [], 'every forwarded response is complete')
  t.ok(answered.some((o) => o.status === 429), 'the limiter was working throughout')
  for (const o of answered.filter((a) => a.status === 200)) if (!forwarded.has(o.id)) t.fail(`answered 200 without reaching the upstream: ${o.id}`)
  t.ok(notAccepted.every((o) => o.error === 'ECONNREFUSED' || o.error === 'ECONNRESET'), 'late requests are refused, not half-served')
  t.ok(gw.output.some((l) => l.includes('shutdown complete')), 'logs the shutdown')
})
