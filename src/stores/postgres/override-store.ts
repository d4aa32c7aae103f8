/**
 * Keeps every gateway's in-memory OverrideTable equal to rate_limit_overrides: loaded at
 * start, reloaded whole on each NOTIFY from the table's trigger (migrations/004) and after
 * every (re)connection of the listening session, so a notification missed during an outage
 * cannot leave a stale table behind. Overrides are few (set by hand), so whole reloads are cheap.
 */
import type { PostgresStore } from './postgres-store.ts'
import type { Logger } from '../../observability/log.ts'
import { OverrideTable, type Override } from '../../policy/overrides.ts'

const CHANNEL = 'rate_limit_overrides'

interface Row { policy: string, user_id: string, capacity: number | null, refill_per_second: number | null, updated_by: string, updated_at: Date }

function toOverride (r: Row): Override {
  return { policy: r.policy, userId: r.user_id, capacity: r.capacity, refillPerSecond: r.refill_per_second, updatedBy: r.updated_by, updatedAt: r.updated_at.toISOString() }
}

export class OverrideStore {
  #table = new OverrideTable()
  readonly #store: PostgresStore
  readonly #log: Logger
  #unlisten: (() => Promise<void>) | null = null
  #started = 0
  #applied = 0
  #closed = false

  /** Every round trip is bounded like the store's own off the request path (statement timeout). */
  constructor (store: PostgresStore, log: Logger) {
    this.#store = store
    this.#log = log
  }

  get table (): OverrideTable {
    return this.#table
  }

  async start (): Promise<void> {
    await this.reload()
    const { unlisten } = await this.#store.bounded('listen', this.#store.sql.listen(CHANNEL, () => { void this.reload() }, () => { void this.reload() }))
    this.#unlisten = unlisten
  }

  /**
   * Reloads the table. Loads may finish out of order; only the latest started one is kept, so
   * a load that began after a write committed always wins over one that began before it.
   */
  async reload (): Promise<void> {
    const seq = ++this.#started
    try {
      const rows = await this.#store.bounded('overrides', this.#store.sql<Row[]>`SELECT policy, user_id, capacity, refill_per_second, updated_by, updated_at FROM rate_limit_overrides`.execute())
      if (seq > this.#applied) {
        this.#applied = seq
        this.#table = new OverrideTable(rows.map(toOverride))
      }
    } catch (err) {
      if (!this.#closed) this.#log.warn({ err }, 'could not reload rate-limit overrides; keeping the previous ones')
    }
  }

  /** Sets an override and returns it; the table is reloaded before this resolves. */
  async set (policy: string, userId: string, capacity: number | null, refillPerSecond: number | null, updatedBy: string): Promise<Override> {
    const sql = this.#store.sql
    const [row] = await this.#store.bounded('overrides', sql<Row[]>`
      INSERT INTO rate_limit_overrides (policy, user_id, capacity, refill_per_second, updated_by)
      VALUES (${policy}, ${userId}, ${capacity}, ${refillPerSecond}, ${updatedBy})
      ON CONFLICT (policy, user_id) DO UPDATE SET capacity = EXCLUDED.capacity, refill_per_second = EXCLUDED.refill_per_second,
        updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()
      RETURNING policy, user_id, capacity, refill_per_second, updated_by, updated_at`.execute())
    await this.reload()
    return toOverride(row!)
  }

  /** Removes an override; returns it, or null when there was none. */
  async remove (policy: string, userId: string): Promise<Override | null> {
    const sql = this.#store.sql
    const [row] = await this.#store.bounded('overrides', sql<Row[]>`
      DELETE FROM rate_limit_overrides WHERE policy = ${policy} AND user_id = ${userId}
      RETURNING policy, user_id, capacity, refill_per_second, updated_by, updated_at`.execute())
    await this.reload()
    return row === undefined ? null : toOverride(row)
  }

  async close (): Promise<void> {
    this.#closed = true
    await this.#unlisten?.().catch(() => {})
  }
}
