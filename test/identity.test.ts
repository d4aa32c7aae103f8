// Caller ids: what is refused with 400 before any bucket is touched, and what is accepted.
import t from 'tap'
import postgres from 'postgres'
import { parseCallerId, parseKey } from '../src/identity/caller-id.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { rawStatus, send } from './helpers/http.ts'

t.test('parseCallerId (pure)', async (t) => {
  t.same(parseCallerId('alice', 'x-user-id'), { ok: true, id: 'alice' })
  t.match(parseCallerId(undefined, 'x-user-id'), { ok: false, reason: 'missing', detail: /x-user-id/ })
  t.match(parseCallerId('   ', 'x-user-id'), { ok: false, reason: 'missing' })
  t.match(parseCallerId('a'.repeat(255), 'x-user-id'), { ok: true })
  t.match(parseCallerId('a'.repeat(256), 'x-user-id'), { ok: false, reason: 'too-long' })
  t.match(parseCallerId('a\tb', 'x-user-id'), { ok: false, reason: 'control-characters' })
  t.match(parseCallerId('a\u007fb', 'x-user-id'), { ok: false, reason: 'control-characters' })
  // Node hands header bytes over as latin1: "é" in UTF-8 arrives as "\u00c3\u00a9".
  t.same(parseCallerId('caf\u00c3\u00a9', 'x-user-id'), { ok: true, id: 'café' })
  t.match(parseCallerId('caf\u00e9', 'x-user-id'), { ok: false, reason: 'invalid-utf8' })
  t.match(parseCallerId('\u00c2\u0085', 'x-user-id'), { ok: false, reason: 'control-characters' }, 'a C1 control encoded in UTF-8')
  t.match(parseKey(''), { ok: false, reason: 'missing' })
  t.match(parseKey('é'.repeat(128)), { ok: false, reason: 'too-long' }, 'keys are measured in UTF-8 bytes')
  t.match(parseKey('\ud800'), { ok: false, reason: 'invalid-utf8' })
})

t.test('bad caller ids get 400 problem+json and touch no bucket', async (t) => {
  const gw = await startTestGateway(t)
  const port = Number(new URL(gw.proxyUrl).port)
  const sql = postgres(gw.databaseUrl, { max: 1 })
  t.teardown(() => sql.end())

  const missing = await send(gw.proxyUrl + '/x')
  t.equal(missing.status, 400)
  t.match(missing.headers.get('content-type'), /^application\/problem\+json/)
  t.match(missing.json().detail, /x-user-id/, 'the detail names the header')

  const cases: Array<[string, string | Buffer]> = [
    ['empty', 'x-user-id: \r\n'],
    ['256 bytes', `x-user-id: ${'a'.repeat(256)}\r\n`],
    ['10 KB', `x-user-id: ${'a'.repeat(10_240)}\r\n`],
    ['tab inside', 'x-user-id: a\tb\r\n'],
    ['SOH control', 'x-user-id: a\u0001b\r\n'],
    ['invalid UTF-8', Buffer.concat([Buffer.from('x-user-id: caf'), Buffer.from([0xe9, 0x0d, 0x0a])])]
  ]
  for (const [name, header] of cases) {
    const head = Buffer.concat([Buffer.from('GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n'), Buffer.from(header), Buffer.from('\r\n')])
    const res = await rawStatus(port, head)
    t.equal(res.status, 400, `${name}: 400`)
  }
  const nul = await rawStatus(port, Buffer.concat([Buffer.from('GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-user-id: a'), Buffer.from([0]), Buffer.from('b\r\n\r\n')]))
  t.equal(nul.status, 400, 'NUL: refused by the HTTP parser with 400')
  const huge = await rawStatus(port, `GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-user-id: a\r\nx-filler: ${'b'.repeat(20_000)}\r\n\r\n`)
  t.equal(huge.status, 431, 'a header block over the limit: 431')

  t.equal(gw.upstream!.received.length, 0, 'nothing was forwarded')
  const [{ count }] = await sql<[{ count: string }]>`SELECT count(*)::text AS count FROM rate_limits`
  t.equal(count, '0', 'no bucket was created')
  const metrics = await (await fetch(gw.controlUrl + '/metrics')).text()
  t.match(metrics, /gateway_rejected_requests_total\{reason="too-long"\} 2/)
})

t.test('ids that are odd but valid are buckets like any other, passed to SQL as parameters', async (t) => {
  const gw = await startTestGateway(t)
  const sql = postgres(gw.databaseUrl, { max: 1 })
  t.teardown(() => sql.end())
  const odd = ["'; DROP TABLE rate_limits; --", 'Robert"); DELETE FROM rate_limits;', 'a'.repeat(255), '{hash}:tag', 'caf\u00c3\u00a9']
  for (const id of odd) {
    const res = await fetch(gw.proxyUrl + '/x', { headers: { 'x-user-id': id } })
    await res.arrayBuffer()
    t.equal(res.status, 201, `allowed: ${id.slice(0, 30)}`)
  }
  const rows = await sql<Array<{ user_id: string }>>`SELECT user_id FROM rate_limits ORDER BY user_id`
  t.equal(rows.length, odd.length, 'one bucket each, table intact')
  t.ok(rows.some((r) => r.user_id === 'café'), 'UTF-8 ids are stored as text')
})
