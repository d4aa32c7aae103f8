// The chaos suite's real partition (scripts/lib/netns.ts): a process in the namespace reaches a
// server on one of the path addresses; once that path is cut a new connection times out (no
// refusal, no EINVAL: packets vanish) and an established one gets no answer; after the restore
// both work again, and the other path never noticed. Stale namespaces of dead processes are
// removed and close() leaves nothing behind. Skipped where network namespaces are unavailable.
import { execFile, spawn } from 'node:child_process'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { promisify } from 'node:util'
import t from 'tap'
import { createPartitionable, namesFor, removeStale, type Partitionable } from '../scripts/lib/netns.ts'

const run = promisify(execFile)

/** Connects from inside the namespace and reports what happened within `ms`. */
async function probe (ns: Partitionable, host: string, port: number, ms: number): Promise<string> {
  const script = `
    const s = require('node:net').connect(${port}, ${JSON.stringify(host)})
    s.setTimeout(${ms})
    s.on('connect', () => s.write('ping'))
    s.on('data', (d) => { console.log('answer ' + d); s.destroy() })
    s.on('timeout', () => { console.log('timeout'); s.destroy() })
    s.on('error', (e) => console.log('error ' + e.code))`
  const [command, args] = ns.exec(process.execPath, ['-e', script])
  return (await run(command, args)).stdout.trim()
}

const accepted = new Set<Socket>()

async function echo (host: string): Promise<Server> {
  const server = createServer((c) => {
    accepted.add(c)
    c.on('close', () => accepted.delete(c)).on('error', () => {})
    c.on('data', (d) => c.write('echo ' + String(d)))
  })
  await new Promise<void>((resolve) => server.listen(0, host, resolve))
  return server
}

/** Closes a server and its connections: a client that quit during the cut sent its FIN into the dead end. */
function shut (server: Server): void {
  for (const c of accepted) c.destroy()
  server.close()
}

// Whether this machine lets us make one at all (root, a kernel that allows it).
const unavailable = await createPartitionable(1).then(async (ns) => { await ns.close(); return false as const }, (err: Error) => `network namespaces unavailable here: ${err.message}`)

t.test('a path cut by a route into a dead end drops packets silently, and comes back', { skip: unavailable, timeout: 60_000 }, async (t) => {
  const ns = await createPartitionable(2)
  t.teardown(ns.close)
  const [a, b] = ns.pathAddresses as [string, string]
  const sa = await echo(a)
  const sb = await echo(b)
  t.teardown(() => { shut(sa); shut(sb) })
  const pa = (sa.address() as AddressInfo).port
  const pb = (sb.address() as AddressInfo).port
  t.equal(await probe(ns, a, pa, 2000), 'answer echo ping', 'path a before the cut')

  // An established connection across the cut: it stays open, and nothing comes back.
  const script = `
    const s = require('node:net').connect(${pa}, ${JSON.stringify(a)})
    s.on('data', (d) => console.log('answer ' + d))
    s.on('error', (e) => console.log('error ' + e.code))
    s.on('connect', () => { s.write('one'); process.stdin.once('data', () => { s.write('two'); setTimeout(() => { console.log('waited'); process.exit(0) }, 1500) }) })`
  const [command, args] = ns.exec(process.execPath, ['-e', script])
  const held = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => held.once('exit', resolve))
  let out = ''
  held.stdout.on('data', (d: Buffer) => { out += d.toString() })
  const deadline = Date.now() + 5000
  while (!out.includes('answer echo one') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  t.match(out, /answer echo one/, 'established connection answered before the cut')

  await ns.cut(a)
  held.stdin.end('go\n')
  const started = Date.now()
  t.equal(await probe(ns, a, pa, 1500), 'timeout', 'a new connection to the cut path times out: no refusal')
  t.ok(Date.now() - started >= 1400, 'it waited for its own timeout')
  await exited
  t.notMatch(out, /echo two|error/, 'the established connection got nothing back and no error')
  t.match(out, /waited/)
  t.equal(await probe(ns, b, pb, 2000), 'answer echo ping', 'the other path is untouched')

  await ns.restore(a)
  await ns.restore(a) // twice is fine
  t.equal(await probe(ns, a, pa, 2000), 'answer echo ping', 'restored')
})

t.test('stale namespaces and links of dead processes are removed; close() leaves nothing', { skip: unavailable, timeout: 60_000 }, async (t) => {
  const ns = await createPartitionable(1)
  t.teardown(ns.close)
  // A crashed run's leftovers: a namespace named for a pid that cannot be alive (above pid_max).
  const dead = namesFor('gwchaos', 4194305, 0)
  await run('ip', ['netns', 'add', dead.namespace])
  await run('ip', ['link', 'add', dead.hostLink, 'type', 'veth', 'peer', 'name', dead.nsLink, 'netns', dead.namespace])
  const removed = await removeStale()
  t.ok(removed.includes(dead.namespace), `removed ${removed.join(', ')}`)
  t.notOk(removed.includes(ns.namespace), 'not the live one')
  const names = (await run('ip', ['netns', 'list'])).stdout
  t.notMatch(names, dead.namespace)
  t.match(names, ns.namespace)
  t.notMatch((await run('ip', ['-o', 'link', 'show'])).stdout, dead.hostLink)
  await ns.close()
  t.notMatch((await run('ip', ['netns', 'list'])).stdout, ns.namespace)
  t.notMatch((await run('ip', ['-o', 'link', 'show'])).stdout, namesFor('gwchaos', process.pid, 0).hostLink.slice(0, -1))
})
