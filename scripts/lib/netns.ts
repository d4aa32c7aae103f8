/**
 * A real network partition for one process: a network namespace joined to this machine's by a
 * veth pair, where the path to one address can be cut and restored with `ip route` alone
 * (iproute2; no iptables, so CI needs nothing extra).
 *
 *   root namespace                          namespace <prefix>-<pid>-<n>
 *   veth <host>  10.231.X.1/24  <------->   veth <ns>  10.231.X.2/24   (the process listens here)
 *                10.231.X.3/32  (PostgreSQL listens here too)
 *                10.231.X.4/32  (Redis listens here too)
 *                                           veth <dead> (up, no ARP; its peer is down)
 *
 * Every store gets an address of its own on the root side, so one path is cut by one /32 route
 * inside the namespace. The cut routes that address into the dead-end veth, whose peer is down:
 * the kernel discards what is sent there without telling the sender, so established
 * connections stop getting answers and new ones time out in SYN retries, as across a real
 * partition. (`ip route add blackhole` would be the obvious route, but for a local sender it
 * fails connect() at once with EINVAL: a refusal, not a partition. Measured on this kernel.)
 * Restoring deletes the route; TCP's retransmissions then get through.
 *
 * Names carry the creating process's pid, so a run that crashed (SIGKILL, no cleanup) leaves
 * namespaces and links that the next run removes (removeStale) without touching a live run's.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

export const DEFAULT_PREFIX = 'gwchaos'
/** Interface names are limited to 15 bytes: a short prefix of their own. */
const LINK_PREFIX = 'gwc'
const SUBNET_BASE = '10.231'

export interface Names {
  namespace: string
  hostLink: string
  nsLink: string
  deadLink: string
  deadPeer: string
}

/** The names of the n-th namespace made by process `pid`. */
export function namesFor (prefix: string, pid: number, n: number): Names {
  const tag = n.toString(36)
  return {
    namespace: `${prefix}-${pid}-${tag}`,
    hostLink: `${LINK_PREFIX}${pid}h${tag}`,
    nsLink: `${LINK_PREFIX}${pid}n${tag}`,
    deadLink: `${LINK_PREFIX}${pid}x${tag}`,
    deadPeer: `${LINK_PREFIX}${pid}y${tag}`
  }
}

/** Namespaces in `ip netns list` output made by a process for which `alive` says false. */
export function staleNamespaces (list: string, prefix: string, alive: (pid: number) => boolean): string[] {
  const re = new RegExp(`^(${prefix}-(\\d+)-[0-9a-z]+)(\\s|$)`)
  const out: string[] = []
  for (const line of list.split('\n')) {
    const m = re.exec(line.trim())
    if (m !== null && !alive(Number(m[2]))) out.push(m[1]!)
  }
  return out
}

/** Root-side links in `ip -o link show` output made by a process for which `alive` says false. */
export function staleLinks (list: string, alive: (pid: number) => boolean): string[] {
  const re = new RegExp(`^\\d+:\\s+(${LINK_PREFIX}(\\d+)h[0-9a-z]+)[@:]`)
  const out: string[] = []
  for (const line of list.split('\n')) {
    const m = re.exec(line.trim())
    if (m !== null && !alive(Number(m[2]))) out.push(m[1]!)
  }
  return out
}

/**
 * The third octet of a 10.231.X.0/24 that no address on this machine is in, starting the search
 * at `seed` (the pid: two runs at once start apart). Null when all 256 are taken.
 */
export function pickSubnet (usedCidrs: string[], seed: number): number | null {
  const used = new Set<number>()
  for (const cidr of usedCidrs) {
    const m = /^10\.231\.(\d+)\./.exec(cidr)
    if (m !== null) used.add(Number(m[1]))
  }
  for (let i = 0; i < 256; i++) {
    const x = (seed + i) % 256
    if (!used.has(x)) return x
  }
  return null
}

function isAlive (pid: number): boolean {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function ip (...args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`)
  }
}

/** Kills what a namespace still runs (a crashed run's processes: ours) and deletes it. */
async function removeNamespace (namespace: string): Promise<void> {
  const pids = (await ip('netns', 'pids', namespace).catch(() => '')).split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number)
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
  await ip('netns', 'del', namespace).catch(() => {})
}

/** Removes namespaces and links that a process no longer alive created with `prefix`. */
export async function removeStale (prefix = DEFAULT_PREFIX): Promise<string[]> {
  const removed: string[] = []
  for (const ns of staleNamespaces(await ip('netns', 'list').catch(() => ''), prefix, isAlive)) {
    await removeNamespace(ns)
    removed.push(ns)
  }
  for (const link of staleLinks(await ip('-o', 'link', 'show').catch(() => ''), isAlive)) {
    await ip('link', 'del', link).catch(() => {})
    removed.push(link)
  }
  return removed
}

export interface Partitionable {
  readonly namespace: string
  /** The root side of the veth: how the namespace reaches this machine. */
  readonly hostAddress: string
  /** The namespace side: how this machine reaches a process in the namespace. */
  readonly nsAddress: string
  /** Addresses on the root side, one per path that can be cut on its own. */
  readonly pathAddresses: readonly string[]
  /** The CIDR the namespace's connections come from (for pg_hba.conf). */
  readonly clientCidr: string
  /** The command line that runs `command args` inside the namespace. */
  exec: (command: string, args: string[]) => [string, string[]]
  /** Silently drops everything the namespace sends to `address` (one of pathAddresses). */
  cut: (address: string) => Promise<void>
  restore: (address: string) => Promise<void>
  /** Kills what still runs in the namespace and removes it and its links. */
  close: () => Promise<void>
}

let made = 0

/**
 * Creates the namespace and its veth pair with `paths` root-side addresses. Throws (with ip's
 * error) where network namespaces are not available: not root, or the kernel refuses.
 */
export async function createPartitionable (paths: number, prefix = DEFAULT_PREFIX): Promise<Partitionable> {
  if (paths < 1 || paths > 250) throw new Error('paths: 1 to 250')
  const names = namesFor(prefix, process.pid, made++)
  const x = pickSubnet((await ip('-o', '-4', 'addr', 'show')).split('\n').map((l) => l.trim().split(/\s+/)[3] ?? ''), process.pid)
  if (x === null) throw new Error(`no free ${SUBNET_BASE}.X.0/24 on this machine`)
  const net = `${SUBNET_BASE}.${x}`
  const hostAddress = `${net}.1`
  const nsAddress = `${net}.2`
  const pathAddresses = Array.from({ length: paths }, (_, i) => `${net}.${3 + i}`)
  const { namespace, hostLink, nsLink, deadLink, deadPeer } = names
  const close = async (): Promise<void> => {
    await removeNamespace(namespace)
    await ip('link', 'del', hostLink).catch(() => {})
  }
  try {
    await ip('netns', 'add', namespace)
    await ip('link', 'add', hostLink, 'type', 'veth', 'peer', 'name', nsLink, 'netns', namespace)
    await ip('addr', 'add', `${hostAddress}/24`, 'dev', hostLink)
    for (const a of pathAddresses) await ip('addr', 'add', `${a}/32`, 'dev', hostLink)
    await ip('link', 'set', hostLink, 'up')
    await ip('-n', namespace, 'addr', 'add', `${nsAddress}/24`, 'dev', nsLink)
    await ip('-n', namespace, 'link', 'set', nsLink, 'up')
    await ip('-n', namespace, 'link', 'set', 'lo', 'up')
    // The dead end: up and without ARP, so a route into it is used and nothing waits for a
    // neighbour (which would report EHOSTUNREACH); its peer stays down, so veth discards it all.
    await ip('-n', namespace, 'link', 'add', deadLink, 'type', 'veth', 'peer', 'name', deadPeer)
    await ip('-n', namespace, 'link', 'set', deadLink, 'arp', 'off', 'up')
  } catch (err) {
    await close()
    throw err
  }
  const checkPath = (address: string): void => {
    if (!pathAddresses.includes(address)) throw new Error(`${address} is not one of ${pathAddresses.join(', ')}`)
  }
  return {
    namespace,
    hostAddress,
    nsAddress,
    pathAddresses,
    clientCidr: `${nsAddress}/32`,
    exec: (command, args) => ['ip', ['netns', 'exec', namespace, command, ...args]],
    cut: async (address) => {
      checkPath(address)
      await ip('-n', namespace, 'route', 'replace', `${address}/32`, 'dev', deadLink)
    },
    restore: async (address) => {
      checkPath(address)
      // Already restored (or never cut) is fine: the route is gone either way.
      await ip('-n', namespace, 'route', 'del', `${address}/32`, 'dev', deadLink).catch((err: Error) => {
        if (!/No such process/.test(err.message)) throw err
      })
    },
    close
  }
}
