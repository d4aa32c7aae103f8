// The access log through the real gateway: off by default; on, one JSON line per request with
// what an operator needs (method, path, status, duration, bytes, caller, policy, decision,
// source, upstream status and time, request id); the caller raw or hashed.
import t from 'tap'
import { createHash } from 'node:crypto'
import { spawnTwoWorkers, startTestGateway, type LogLine, type SpawnedGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'

const accessLines = (logs: LogLine[]): LogLine[] => logs.filter((l) => l.log === 'access')
const waitForLines = async (logs: LogLine[], n: number): Promise<LogLine[]> => {
  await waitFor(() => accessLines(logs).length >= n, { what: `${n} access lines` })
  return accessLines(logs)
}

t.test('off by default: no line per request', async (t) => {
  const gw = await startTestGateway(t)
  const before = gw.logs.length
  for (let i = 0; i < 3; i++) t.equal((await send(gw.proxyUrl + '/x', { user: 'quiet' })).status, 201)
  t.equal(gw.logs.length, before)
})

t.test('on: one line per request, allowed, limited, refused', async (t) => {
  const gw = await startTestGateway(t, { config: { log: { access: true }, limits: { capacity: 1, refillPerSecond: 0.001 } } })
  const ok = await send(gw.proxyUrl + '/items/1?secret=q', { user: 'ann', headers: { 'x-request-id': 'req-allowed-1' } })
  t.equal(ok.status, 201)
  t.equal((await send(gw.proxyUrl + '/items/2', { user: 'ann' })).status, 429)
  t.equal((await send(gw.proxyUrl + '/items/3')).status, 400)
  const lines = await waitForLines(gw.logs, 3)
  t.equal(lines.length, 3)
  t.match(lines[0], {
    level: 30, msg: 'request', request_id: 'req-allowed-1', method: 'GET', path: '/items/1', status: 201,
    duration_ms: Number,  caller: 'ann', policy: 'default',
    decision: 'allowed', source: 'new-user', upstream_status: 201, upstream_ms: Number
  })
  t.notMatch(JSON.stringify(lines), /secret=q/, 'the query string is not logged')
  t.match(lines[1], { path: '/items/2', status: 429, caller: 'ann', decision: 'limited', policy: 'default', upstream_status: null, upstream_ms: null })
  t.match(lines[2], { path: '/items/3', status: 400, caller: null, decision: 'refused', policy: null, source: null })
  t.ok((lines[0]!.bytes as number) > ok.body.length, 'bytes sent: head and body')
  t.ok((lines[1]!.bytes as number) > 0, 'the 429 too')
})

t.test('ACCESS_LOG_CALLER hashed: the caller id is not written', async (t) => {
  const gw = await startTestGateway(t, { config: { log: { access: true, accessCaller: 'hashed' } } })
  await send(gw.proxyUrl + '/x', { user: 'alice@example.com' })
  const [line] = await waitForLines(gw.logs, 1)
  t.equal(line!.caller, createHash('sha256').update('alice@example.com').digest('hex').slice(0, 16))
  t.notMatch(JSON.stringify(gw.logs), /alice@example\.com/)
})

/** The access lines a process has written to stdout; a line that is not whole JSON fails. */
function processAccessLines (t: { fail: (message: string) => unknown }, gw: SpawnedGateway): LogLine[] {
  const out: LogLine[] = []
  for (const line of gw.output) {
    if (!line.startsWith('{')) continue
    try {
      const parsed = JSON.parse(line) as LogLine
      if (parsed.log === 'access') out.push(parsed)
    } catch {
      t.fail(`a line that is not whole JSON: ${line.slice(0, 200)}`)
    }
  }
  return out
}

t.test('a gateway process (two workers, one stdout): lines buffered yet whole, a lone line within seconds, none lost at SIGTERM', async (t) => {
  const gw = await spawnTwoWorkers(t, { RATE_LIMIT_CAPACITY: '100000' })
  // One request and nothing after it: the buffer is not full, the periodic flush writes it.
  t.equal((await send(gw.proxyUrl + '/lone', { user: 'lone' })).status, 201)
  await waitFor(() => processAccessLines(t, gw).some((l) => l.caller === 'lone'), { timeoutMs: 5_000, what: 'the lone request\'s line, written while idle' })

  // Many lines, from both workers at once, then SIGTERM at once: every line is written, whole.
  const count = 600
  const replies = await Promise.all(Array.from({ length: count }, async (_, i) => await send(gw.proxyUrl + `/burst/${i}`, { user: `burst-${i % 7}` })))
  t.equal(replies.filter((r) => r.status === 201).length, count, 'all served')
  t.equal(await gw.stop('SIGTERM'), 0, 'exit 0')
  const burst = processAccessLines(t, gw).filter((l) => typeof l.path === 'string' && l.path.startsWith('/burst/'))
  t.equal(burst.length, count, 'one whole line per request, none lost at shutdown')
  t.equal(new Set(burst.map((l) => l.path)).size, count, 'each request once')
  t.equal(new Set(burst.map((l) => l.pid)).size, 2, 'written by both workers')
})
