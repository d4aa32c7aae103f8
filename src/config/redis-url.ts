/**
 * REDIS_URL names one of three topologies, so a deployment changes one variable, not several:
 *
 *   redis://[user:pass@]host:port[/db]                         one server (rediss:// for TLS)
 *   redis+cluster://[user:pass@]host:port[,host:port...]       Redis Cluster, seed nodes
 *   redis+sentinel://[user:pass@]host:port[,host:port...]/name[/db]
 *                                                              Sentinel, monitored master `name`
 *
 * The +cluster and +sentinel forms take several hosts, which WHATWG URL cannot parse, so they
 * are parsed here. Pure: no I/O.
 */

export interface RedisEndpoint { readonly host: string, readonly port: number }

export type RedisTarget =
  | { readonly mode: 'standalone', readonly url: string }
  | {
    readonly mode: 'cluster'
    readonly nodes: readonly RedisEndpoint[]
    readonly tls: boolean
    readonly username?: string
    readonly password?: string
  }
  | {
    readonly mode: 'sentinel'
    readonly sentinels: readonly RedisEndpoint[]
    readonly masterName: string
    readonly db: number
    readonly tls: boolean
    readonly username?: string
    readonly password?: string
  }

export class RedisUrlError extends Error {
  override name = 'RedisUrlError'
}

const SCHEME = /^(rediss?)(?:\+(cluster|sentinel))?:\/\/(.*)$/i

function parseHost (text: string, defaultPort: number): RedisEndpoint {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(text)
  if (m === null) throw new RedisUrlError(`"${text}" is not host:port`)
  const port = m[3] === undefined ? defaultPort : Number(m[3])
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RedisUrlError(`port of "${text}" must be 1-65535`)
  return { host: m[1] ?? m[2]!, port }
}

function credentials (userinfo: string | undefined): { username?: string, password?: string } {
  if (userinfo === undefined || userinfo === '') return {}
  const colon = userinfo.indexOf(':')
  const user = decodeURIComponent(colon < 0 ? userinfo : userinfo.slice(0, colon))
  const password = colon < 0 ? undefined : decodeURIComponent(userinfo.slice(colon + 1))
  return { ...(user !== '' ? { username: user } : {}), ...(password !== undefined ? { password } : {}) }
}

export function parseRedisUrl (value: string): RedisTarget {
  const m = SCHEME.exec(value)
  if (m === null) throw new RedisUrlError('must start with redis://, rediss://, redis+cluster:// or redis+sentinel://')
  const tls = m[1]!.toLowerCase() === 'rediss'
  const mode = m[2]?.toLowerCase()
  if (mode === undefined) {
    try {
      void new URL(value)
    } catch {
      throw new RedisUrlError('is not a valid URL')
    }
    return { mode: 'standalone', url: value }
  }
  let rest = m[3]!
  const query = rest.indexOf('?')
  if (query >= 0) throw new RedisUrlError(`redis+${mode}:// URLs take no query parameters`)
  const at = rest.lastIndexOf('@')
  const userinfo = at >= 0 ? rest.slice(0, at) : undefined
  rest = at >= 0 ? rest.slice(at + 1) : rest
  const slash = rest.indexOf('/')
  const hostList = slash >= 0 ? rest.slice(0, slash) : rest
  const path = (slash >= 0 ? rest.slice(slash + 1) : '').split('/').filter((s) => s !== '')
  const defaultPort = mode === 'sentinel' ? 26379 : 6379
  const hosts = hostList.split(',').filter((h) => h !== '')
  if (hosts.length === 0) throw new RedisUrlError(`redis+${mode}:// needs at least one host:port`)
  const endpoints = hosts.map((h) => parseHost(h, defaultPort))
  if (mode === 'cluster') {
    // Redis Cluster has only database 0.
    if (path.length > 1 || (path.length === 1 && path[0] !== '0')) throw new RedisUrlError('Redis Cluster has only database 0: drop the path')
    return { mode: 'cluster', nodes: endpoints, tls, ...credentials(userinfo) }
  }
  const masterName = path[0]
  if (masterName === undefined) throw new RedisUrlError('redis+sentinel:// needs the master name as the path, e.g. redis+sentinel://host:26379/mymaster')
  const db = path[1] === undefined ? 0 : Number(path[1])
  if (!Number.isInteger(db) || db < 0 || path.length > 2) throw new RedisUrlError('after the master name only a database number may follow')
  return { mode: 'sentinel', sentinels: endpoints, masterName: decodeURIComponent(masterName), db, tls, ...credentials(userinfo) }
}

/** The URL with any password replaced, for logs. */
export function redactRedisUrl (value: string): string {
  return value.replace(/(\/\/[^:@/]*:)[^@/]*@/, '$1***@')
}
