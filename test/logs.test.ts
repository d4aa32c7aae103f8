// The original's log events, as pino JSON lines; per-request events only at debug level.
import t from 'tap'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

t.test('start-up and decision events at debug level', async (t) => {
  const gw = await startTestGateway(t, { logLevel: 'debug', config: { limits: { capacity: 1 } } })
  const msgs = gw.logs.map((l) => l.msg)
  t.ok(msgs.includes('Connected to PostgreSQL successfully'))
  t.ok(msgs.includes('Connected to Redis successfully'))
  t.ok(msgs.some((m) => /^Starting server on :\d+$/.test(m)))
  await send(gw.proxyUrl + '/x', { user: 'logged' })
  await send(gw.proxyUrl + '/x', { user: 'logged' })
  const allowed = gw.logs.find((l) => l.msg === 'rate limit allowed')
  t.match(allowed, { user_id: 'logged', remaining_tokens: 0, source: 'new-user' })
  const exceeded = gw.logs.find((l) => l.msg === 'rate limit exceeded')
  t.match(exceeded, { user_id: 'logged', source: 'redis' })
  t.ok(typeof allowed?.time === 'number' && typeof allowed.level === 'number', 'pino JSON lines')
})

t.test('no per-request events at the default level', async (t) => {
  const gw = await startTestGateway(t)
  const before = gw.logs.length
  for (let i = 0; i < 5; i++) await send(gw.proxyUrl + '/x', { user: 'quiet' })
  t.equal(gw.logs.length, before, 'five requests, no log lines')
})

t.test('a store failure is logged with its error', async (t) => {
  const gw = await startTestGateway(t, { redisUrl: 'redis://127.0.0.1:1' })
  for (let i = 0; i < 5; i++) await send(gw.proxyUrl + '/x', { user: 'r' })
  const down = gw.logs.filter((l) => l.msg === 'Redis unavailable')
  t.equal(down.length, 1, 'once per transition')
  t.match(down[0], { level: 50, store: 'redis', err: { message: /ECONNREFUSED/ } })
})
