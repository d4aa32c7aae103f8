/**
 * Calls back when a watched file's content changes. Watches the directory rather than the
 * file: editors and config-management tools replace a file by renaming a new one over it,
 * which ends a watch on the old inode. Events are debounced and a change is only reported
 * when the bytes differ from the last ones seen, so one save is one reload.
 */
import { createHash } from 'node:crypto'
import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { basename, dirname } from 'node:path'

function digest (path: string): string | null {
  try {
    return createHash('sha256').update(readFileSync(path)).digest('hex')
  } catch {
    return null
  }
}

export function watchFiles (paths: readonly string[], onChange: (path: string) => void, debounceMs = 100): () => void {
  const watchers: FSWatcher[] = []
  const timers = new Map<string, NodeJS.Timeout>()
  for (const path of new Set(paths)) {
    let seen = digest(path)
    const name = basename(path)
    const fire = (): void => {
      timers.delete(path)
      const now = digest(path)
      if (now === null || now === seen) return // mid-replace, or touched without a change
      seen = now
      onChange(path)
    }
    const watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      if (file !== null && file !== name) return
      clearTimeout(timers.get(path))
      timers.set(path, setTimeout(fire, debounceMs))
    })
    watcher.on('error', () => {}) // directory gone: nothing more to watch
    watchers.push(watcher)
  }
  return () => {
    for (const w of watchers) w.close()
    for (const t of timers.values()) clearTimeout(t)
  }
}
