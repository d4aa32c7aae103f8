// Upstream faults beyond 502/504 (test/proxy.test.ts has those): an upstream that resets the
// connection mid-response, and a client that goes away while the upstream is working.
import { request } from 'node:http'
import t from 'tap'
import { startTestGateway, type TestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'

/** gateway_upstream_errors_total{kind="interrupted"} */
async function interrupted (gw: TestGateway): Promise<number> {
  const metric = await gw.metrics.registry.getSingleMetric('gateway_upstream_errors_total')!.get()
  return metric.values.find((v) => v.labels.kind === 'interrupted')?.value ?? -1
}

/** A raw GET that resolves with what arrived before the response ended or broke. */
function rawGet (url: string, user: string): Promise<{ status: number, body: string, error: string | null }> {
  return new Promise((resolve) => {
    const req = request(url, { headers: { 'x-user-id': user } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, error: null }))
      res.on('error', (err) => resolve({ status: res.statusCode ?? 0, body, error: err.message }))
      res.on('aborted', () => resolve({ status: res.statusCode ?? 0, body, error: 'aborted' }))
    })
    req.on('error', (err) => resolve({ status: 0, body: '', error: err.message }))
    req.end()
  })
}

t.test('an upstream that resets mid-response: the client response is aborted, the gateway stays healthy', async (t) => {
  const gw = await startTestGateway(t)
  for (let i = 0; i < 3; i++) {
    const res = await rawGet(gw.proxyUrl + '/reset', 'resetter')
    // Headers (200, 1 MB announced) were already on their way: the only honest signal left
    // is to cut the client's response short, never to complete it as if it were whole.
    t.ok(res.error !== null || res.status >= 500, `attempt ${i + 1}: the response is not completed as if whole (status ${res.status}, ${res.body.length} bytes, ${res.error})`)
    t.ok(res.body.length < 1_000_000)
  }
  const after = await send(gw.proxyUrl + '/fine', { user: 'other' })
  t.equal(after.status, 201, 'the next request is served normally')
  t.equal((await fetch(gw.controlUrl + '/healthz')).status, 200, 'healthy')
  t.notOk(gw.logs.some((l) => l.level >= 60), 'nothing fatal logged')
  await waitFor(async () => await interrupted(gw) === 3, { what: 'three interrupted responses counted' })
  t.equal(gw.logs.filter((l) => l.level === 40 && /upstream response interrupted/.test(l.msg)).length, 3, 'each logged once, at warn')
})

t.test('an upstream body that pauses longer than the timeout: cut short, logged and counted', async (t) => {
  const gw = await startTestGateway(t, { config: { proxy: { upstreamTimeoutMs: 300 } } })
  const res = await rawGet(gw.proxyUrl + '/stall/2000', 'staller')
  t.equal(res.status, 200, 'the head had already gone out')
  t.ok(res.error !== null, `the client sees an incomplete response (${res.error}), not an ending`)
  t.notMatch(res.body, /last/)
  await waitFor(async () => await interrupted(gw) === 1, { what: 'the interruption counted' })
  t.ok(gw.logs.some((l) => l.level === 40 && /upstream response interrupted/.test(l.msg)), 'logged at warn')
})

t.test('a client that disconnects aborts the upstream request', async (t) => {
  const gw = await startTestGateway(t)
  const upstream = gw.upstream!
  const controller = new AbortController()
  const pending = fetch(gw.proxyUrl + '/slow/10000', { headers: { 'x-user-id': 'quitter' }, signal: controller.signal }).catch((err: Error) => err)
  await waitFor(() => upstream.received.some((r) => r.url === '/slow/10000'), { what: 'the request to reach the upstream' })
  const abortedAt = Date.now()
  controller.abort()
  t.match(await pending, { name: 'AbortError' })
  await waitFor(() => upstream.aborted.includes('/slow/10000'), { timeoutMs: 5_000, what: 'the upstream to see its request aborted' })
  t.ok(Date.now() - abortedAt < 5_000, 'aborted at once, not when the upstream would have finished')
  const after = await send(gw.proxyUrl + '/fine', { user: 'quitter' })
  t.equal(after.status, 201, 'the gateway carries on')
  t.equal(await interrupted(gw), 0, 'a client leaving is not an upstream fault')
})

t.test('connection refused and timeout leave the gateway healthy under repeated faults', async (t) => {
  const dead = await startTestGateway(t, { upstreamUrl: 'http://127.0.0.1:1' })
  const slow = await startTestGateway(t, { config: { proxy: { upstreamTimeoutMs: 100 } } })
  const [refused, timedOut] = await Promise.all([
    Promise.all(Array.from({ length: 20 }, (_, i) => send(dead.proxyUrl + '/x', { user: `r${i}` }))),
    Promise.all(Array.from({ length: 20 }, (_, i) => send(slow.proxyUrl + '/slow/1000', { user: `s${i}` })))
  ])
  t.same([...new Set(refused.map((r) => r.status))], [502], 'refused: 502 every time')
  t.same([...new Set(timedOut.map((r) => r.status))], [504], 'too slow: 504 every time')
  for (const gw of [dead, slow]) t.equal((await fetch(gw.controlUrl + '/healthz')).status, 200)
  t.equal((await send(slow.proxyUrl + '/fast', { user: 'fast' })).status, 201, 'a healthy route still works')
})
