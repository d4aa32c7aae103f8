/**
 * Private Redis topologies for tests: a Redis Cluster of local redis-server processes, and a
 * Sentinel watching a private master. Each lives in a temp dir on free ports, keeps nothing on
 * disk beyond its node/sentinel config, and is torn down (SIGKILL, dir removed) at teardown.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { waitFor } from './http.ts'

interface Teardown { teardown: (fn: () => unknown) => void }

async function canListen (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A free port whose cluster bus port (port + 10000) is free too. */
export async function freePortPair (): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000)
    if (await canListen(port) && await canListen(port + 10_000)) return port
  }
  throw new Error('no free port pair found')
}

function startProcess (t: Teardown, args: string[], what: string): ChildProcess {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const output: string[] = []
  child.stdout!.on('data', (c: Buffer) => output.push(c.toString()))
  child.stderr!.on('data', (c: Buffer) => output.push(c.toString()))
  child.on('error', (err) => output.push(String(err)))
  child.on('exit', (code, signal) => {
    if (signal !== 'SIGKILL') process.stderr.write(`${what} exited (${code ?? signal}):\n${output.join('')}\n`)
  })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  return child
}

async function ping (port: number): Promise<boolean> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    return (await client.ping()) === 'PONG'
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

async function info (port: number, command: string[]): Promise<string> {
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {}) // a refused connection rejects the command below
  try {
    return String(await client.call(command[0]!, ...command.slice(1)))
  } finally {
    client.disconnect()
  }
}

export interface RedisCluster {
  /** REDIS_URL for the gateway: redis+cluster://127.0.0.1:p1,127.0.0.1:p2,... */
  readonly url: string
  readonly ports: number[]
}

/** Starts `size` masters, joins them with `redis-cli --cluster create`, waits for cluster_state:ok. */
export async function startRedisCluster (t: Teardown, size = 3): Promise<RedisCluster> {
  const cluster = await startUnformedCluster(t, size)
  await cluster.form()
  return cluster
}

/**
 * `size` cluster-enabled masters that answer but are not joined yet (no node owns a slot): what
 * a client meets while a cluster is being created. `form` joins them and waits for
 * cluster_state:ok on every node.
 */
export async function startUnformedCluster (t: Teardown, size = 3): Promise<RedisCluster & { form: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'rl-cluster-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ports: number[] = []
  for (let i = 0; i < size; i++) {
    const port = await freePortPair()
    ports.push(port)
    startProcess(t, ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
      '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--dir', dir, '--save', '', '--appendonly', 'no'], `cluster node ${port}`)
  }
  for (const port of ports) await waitFor(() => ping(port), { what: `redis-server on ${port}` })
  const form = async (): Promise<void> => {
    // Asynchronously: a synchronous spawn would freeze this process's event loop, and with it
    // whatever the test started next to the cluster (a private PostgreSQL, say).
    await new Promise<void>((resolve, reject) => {
      execFile('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'],
        { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
          if (err === null) resolve()
          else reject(new Error(`redis-cli --cluster create failed (${err.code ?? err.signal ?? err.message}):\n${stdout}\n${stderr}`))
        })
    })
    // Every node must agree the cluster is up and see all masters before a client can rely on it.
    for (const port of ports) {
      await waitFor(async () => {
        const text = await info(port, ['CLUSTER', 'INFO'])
        return text.includes('cluster_state:ok') && text.includes(`cluster_known_nodes:${size}`)
      }, { what: `cluster_state:ok on ${port}`, timeoutMs: 20_000, intervalMs: 100 })
    }
  }
  return { url: 'redis+cluster://' + ports.map((p) => `127.0.0.1:${p}`).join(','), ports, form }
}

/** Keys stored on each node of the cluster (to show the buckets really spread). */
export async function keysPerNode (cluster: RedisCluster, pattern: string): Promise<number[]> {
  return await Promise.all(cluster.ports.map(async (port) => {
    const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null })
    client.on('error', () => {})
    try {
      return (await client.keys(pattern)).length
    } finally {
      client.disconnect()
    }
  }))
}

export interface RedisSentinel {
  /** REDIS_URL for the gateway: redis+sentinel://127.0.0.1:<sentinel>/<master name> */
  readonly url: string
  readonly masterPort: number
  readonly sentinelPort: number
}

/** One private master and one sentinel (`redis-server --sentinel`) monitoring it. */
export async function startRedisSentinel (t: Teardown, masterName = 'gwmaster'): Promise<RedisSentinel> {
  const dir = mkdtempSync(join(tmpdir(), 'rl-sentinel-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const masterPort = await freePortPair()
  startProcess(t, ['--port', String(masterPort), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], 'sentinel master')
  await waitFor(() => ping(masterPort), { what: 'sentinel master' })
  const sentinelPort = await freePortPair()
  // Sentinel rewrites its config file, so it must be a writable file of its own.
  const conf = join(dir, 'sentinel.conf')
  writeFileSync(conf, [`port ${sentinelPort}`, 'bind 127.0.0.1', `dir ${dir}`,
    `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 1`, ''].join('\n'))
  startProcess(t, [conf, '--sentinel'], 'sentinel')
  await waitFor(async () => {
    try {
      const reply = await info(sentinelPort, ['SENTINEL', 'get-master-addr-by-name', masterName])
      return reply.includes(String(masterPort))
    } catch {
      return false
    }
  }, { what: 'sentinel to know the master', intervalMs: 100 })
  return { url: `redis+sentinel://127.0.0.1:${sentinelPort}/${masterName}`, masterPort, sentinelPort }
}
