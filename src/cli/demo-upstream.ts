/**
 * The demo upstream of docker-compose.yml: the gateway's built-in echo server on its own,
 * listening on HOST:PORT (default 0.0.0.0:3000), so the stack needs no third-party image.
 */
import { startEchoUpstream } from '../proxy/echo-upstream.ts'

const host = process.env.HOST ?? '0.0.0.0'
const port = Number(process.env.PORT ?? 3000)
const upstream = await startEchoUpstream(host, port)
process.stdout.write(JSON.stringify({ level: 30, time: Date.now(), msg: `demo upstream listening on ${upstream.url}` }) + '\n')
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { void upstream.close().then(() => process.exit(0)) })
}
