/** Waiting for a condition with a deadline (never a bare sleep that hopes it is long enough). */

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `check` until it returns true or the deadline passes; a check that throws counts as
 * false (a server that is not up yet refuses connections).
 */
export async function pollUntil (what: string, check: () => Promise<boolean> | boolean, { timeoutMs = 15_000, intervalMs = 50 } = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let ok = false
    try { ok = await check() } catch { ok = false }
    if (ok) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}
