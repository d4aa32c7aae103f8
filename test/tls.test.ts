// TLS termination: with a certificate and key configured, the proxy port speaks HTTPS, limits
// as before, and tells the upstream the client came over HTTPS.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { connect } from 'node:tls'
import { Agent } from 'undici'
import { ConfigError, loadConfig } from '../src/config/load.ts'
import { createTestDatabase, createRedisPrefix } from './helpers/stores.ts'
import { spawnGateway, startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'

const run = promisify(execFile)

/** A throwaway self-signed certificate for 127.0.0.1, made by openssl for this test (again into `into`, to renew one). */
async function selfSigned (t: { teardown: (fn: () => unknown) => void }, into?: { cert: string, key: string }): Promise<{ cert: string, key: string, ca: Buffer }> {
  let files = into
  if (files === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'gw-tls-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    files = { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') }
  }
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', files.key, '-out', files.cert])
  return { ...files, ca: readFileSync(files.cert) }
}

/** The fingerprint of the certificate the server presents to a new connection. */
async function presented (url: string): Promise<string> {
  const { hostname, port } = new URL(url)
  return await new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port), rejectUnauthorized: false }, () => {
      resolve(socket.getPeerCertificate().fingerprint256)
      socket.end()
    })
    socket.once('error', reject)
  })
}

t.test('HTTPS on the proxy port: limited as before, X-Forwarded-Proto https upstream', async (t) => {
  const tls = await selfSigned(t)
  const gw = await startTestGateway(t, { config: { limits: { capacity: 2, refillPerSecond: 0.01 }, proxy: { tlsCertFile: tls.cert, tlsKeyFile: tls.key } } })
  t.match(gw.proxyUrl, /^https:\/\/127\.0\.0\.1:\d+$/)
  const dispatcher = new Agent({ connect: { ca: tls.ca } })
  t.teardown(() => dispatcher.close())
  const over = { dispatcher } as unknown as RequestInit
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await send(`${gw.proxyUrl}/secure`, { ...over, user: 'tls-user' })).status)
  t.same(statuses, [201, 201, 429], 'two allowed, then refused, over HTTPS')
  const seen = gw.upstream!.received.at(-1)!.headers
  t.equal(seen['x-forwarded-proto'], 'https', 'the upstream learns the client used HTTPS')
  t.equal(seen['x-forwarded-for'], '127.0.0.1')

  const plain = gw.proxyUrl.replace('https:', 'http:')
  await t.rejects(send(`${plain}/secure`, { user: 'tls-user' }), 'plain HTTP is not served on the TLS port')
  const stillRefused = await send(`${gw.proxyUrl}/secure`, { ...over, user: 'tls-user' })
  t.equal(stillRefused.status, 429, 'the gateway carries on')
})

t.test('TLS settings: both files or neither; an unreadable file stops start-up naming the field', async (t) => {
  t.throws(() => loadConfig({ env: { TLS_CERT_FILE: '/x/cert.pem' } }), ConfigError)
  try {
    loadConfig({ env: { TLS_CERT_FILE: '/x/cert.pem' } })
  } catch (err) {
    t.match((err as Error).message, /proxy\.tlsKeyFile: tlsCertFile and tlsKeyFile go together/, 'names the field')
  }
  await t.rejects(startTestGateway(t, { config: { proxy: { tlsCertFile: '/nonexistent/cert.pem', tlsKeyFile: '/nonexistent/key.pem' } } }),
    /proxy\.tlsCertFile \(TLS_CERT_FILE\): cannot read \/nonexistent\/cert\.pem: ENOENT/)
})

t.test('a renewed certificate is picked up by a reload; an unreadable one leaves the current one', async (t) => {
  const first = await selfSigned(t)
  const gw = await startTestGateway(t, { config: { proxy: { tlsCertFile: first.cert, tlsKeyFile: first.key } } })
  const before = await presented(gw.proxyUrl)
  const renewed = await selfSigned(t, first) // same paths, new key and certificate
  t.equal(gw.reload('test').ok, true, 'reload applied')
  const after = await presented(gw.proxyUrl)
  t.not(after, before, 'new connections get the renewed certificate')
  t.ok(gw.logs.some((l) => l.msg === 'TLS certificate reloaded'), 'the reload is logged')
  const dispatcher = new Agent({ connect: { ca: renewed.ca } })
  t.teardown(() => dispatcher.close())
  t.equal((await send(`${gw.proxyUrl}/renewed`, { ...({ dispatcher } as unknown as RequestInit), user: 'tls-renew' })).status, 201, 'and it verifies')

  writeFileSync(first.cert, 'not a certificate')
  gw.reload('test')
  t.ok(gw.logs.some((l) => l.msg === 'TLS certificate reload failed; the current certificate stays'), 'a broken file is refused')
  t.equal(await presented(gw.proxyUrl), after, 'the renewed certificate stays in use')
})

t.test('the running gateway watches its certificate files: a renewal needs no signal', async (t) => {
  const files = await selfSigned(t)
  const gw = await spawnGateway(t, {
    DATABASE_URL: await createTestDatabase(t), REDIS_KEY_PREFIX: createRedisPrefix(t), TLS_CERT_FILE: files.cert, TLS_KEY_FILE: files.key
  })
  const url = gw.proxyUrl.replace('http:', 'https:')
  const before = await presented(url)
  await selfSigned(t, files)
  await waitFor(async () => (await presented(url)) !== before, { timeoutMs: 10_000, what: 'the renewed certificate in use' })
  t.pass('renewed certificate presented to new connections')
  t.equal(await gw.stop(), 0, 'and the gateway shuts down cleanly')
})
