// Reading the gateway's own metrics in a test, from its registry (no scrape).
import type { Metrics } from '../../src/observability/metrics.ts'

/** The sum of a metric's values whose labels include `labels` (`{}`: all of them). Throws for an unknown metric. */
export async function metricSum (metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name)
  if (metric === undefined) throw new Error(`no metric ${name}`)
  const { values } = await metric.get()
  return values.filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want)).reduce((sum, v) => sum + v.value, 0)
}
