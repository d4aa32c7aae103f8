/**
 * An embedded PostgreSQL for the zero-setup first run: PGlite (PostgreSQL compiled to WASM)
 * stored in a data folder, served on a loopback port over the wire protocol by
 * pglite-socket, so the gateway's postgres.js code, migrations and stored function run
 * unchanged against it.
 *
 * Single process by construction: PGlite is one backend, so the gateway's pool is cut to one
 * connection (several busy connections would interleave their extended-protocol messages in
 * that one backend), and a lock file keeps a second gateway off the same folder.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'
import { dirname, resolve } from 'node:path'

export interface EmbeddedPostgres {
  /** postgres:// URL of the loopback listener. */
  readonly url: string
  /** Absolute path of the data folder. */
  readonly dataDir: string
  close: () => Promise<void>
}

export class EmbeddedPostgresLockedError extends Error {
  override name = 'EmbeddedPostgresLockedError'
}

function alive (pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Takes `<dataDir>.lock` (PGlite keeps no postmaster.pid of its own). A lock left by a process
 * that is gone is taken over; one held by a live process is refused.
 */
function lock (dataDir: string): () => void {
  const file = dataDir + '.lock'
  mkdirSync(dirname(file), { recursive: true })
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx')
      writeSync(fd, String(process.pid))
      closeSync(fd)
      return () => rmSync(file, { force: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = Number(readFileSync(file, 'utf8').trim())
      if (alive(holder)) {
        throw new EmbeddedPostgresLockedError(`the embedded PostgreSQL in ${dataDir} is in use by process ${holder}; ` +
          'it serves one gateway process only (set DATABASE_URL to share a real PostgreSQL)')
      }
      rmSync(file, { force: true })
    }
  }
  throw new EmbeddedPostgresLockedError(`could not take ${file}`)
}

export async function startEmbeddedPostgres (dataDir: string): Promise<EmbeddedPostgres> {
  const dir = resolve(dataDir)
  const unlock = lock(dir)
  try {
    // Loaded only when used: ~30 MB of WASM that a deployment with DATABASE_URL never needs.
    const [{ PGlite }, { PGLiteSocketServer }] = await Promise.all([
      import('@electric-sql/pglite'),
      import('@electric-sql/pglite-socket')
    ])
    mkdirSync(dir, { recursive: true })
    const db = await PGlite.create(dir)
    // Two sessions: the gateway's pool of one, and the LISTEN session of the override store
    // (src/stores/postgres/override-store.ts), which sends one statement when it connects and then idles.
    const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0, maxConnections: 2 })
    try {
      await server.start()
    } catch (err) {
      await db.close()
      throw err
    }
    let closing: Promise<void> | undefined
    return {
      url: `postgres://postgres@${server.getServerConn()}/postgres`,
      dataDir: dir,
      close: () => {
        closing ??= (async () => {
          try {
            await server.stop()
            await db.close()
          } finally {
            unlock()
          }
        })()
        return closing
      }
    }
  } catch (err) {
    unlock()
    throw err
  }
}
