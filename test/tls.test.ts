// TLS termination: with a certificate and key configured, the proxy port speaks HTTPS, limits
// as before, and tells the upstream the client came over HTTPS.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Agent } from 'undici'
import { ConfigError, loadConfig } from '../src/config/load.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send } from './helpers/http.ts'

const run = promisify(execFile)

/** A throwaway self-signed certificate for 127.0.0.1, made by openssl for this test. */
async function selfSigned (t: { teardown: (fn: () => unknown) => void }): Promise<{ cert: string, key: string, ca: Buffer }> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert])
  return { cert, key, ca: readFileSync(cert) }
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
