// A real Prometheus (Debian's package) scrapes a running gateway: PromQL through its HTTP API
// sees exactly the blocked requests; the alert rules load and evaluate; every dashboard query
// runs without error against real data.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { packageRoot } from '../src/core/package.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { send, waitFor } from './helpers/http.ts'
import { startPrometheus } from './helpers/prometheus.ts'

t.test('Prometheus scrapes the control port and counts the blocked requests', async (t) => {
  const gw = await startTestGateway(t, { config: { limits: { capacity: 3, refillPerSecond: 0.001 } } })
  const rulesFile = join(packageRoot(), 'dashboards', 'prometheus', 'alerts.yml')
  const prom = await startPrometheus(t, { targets: [new URL(gw.controlUrl).host], ruleFiles: [rulesFile], scrapeSeconds: 1 })

  const statuses = []
  for (let i = 0; i < 7; i++) statuses.push((await send(gw.proxyUrl + '/p', { user: 'scraped' })).status)
  statuses.push((await send(gw.proxyUrl + '/p', { user: 'other' })).status)
  t.same(statuses, [201, 201, 201, 429, 429, 429, 429, 201])

  const value = async (promql: string): Promise<number | undefined> => {
    const [sample] = await prom.query(promql)
    return sample === undefined ? undefined : Number(sample.value[1])
  }
  const blocked = 'sum(gateway_decisions_total{job="ratelimit-gateway",result="blocked"})'
  await waitFor(async () => (await value(blocked)) === 4, { timeoutMs: 30_000, what: `${blocked} == 4` })
  t.equal(await value(blocked), 4, 'blocked requests seen through PromQL')
  t.equal(await value('sum(gateway_decisions_total{result="allowed"})'), 4)
  t.same(await prom.query('sum by (source) (gateway_decisions_total{result="blocked"}) > 0').then((r) => r.map((s) => [s.metric.source, s.value[1]])), [['redis', '4']], 'all from Redis snapshots')
  t.equal(await value('gateway_store_up{store="postgres"}'), 1)
  t.equal(await value(`up{job="ratelimit-gateway"}`), 1, 'the target is healthy')

  // The alert rules loaded and evaluate cleanly against real series; none fires on a healthy gateway.
  const loadedRules = async (): Promise<Array<{ name: string, health: string, lastEvaluation: string }>> => {
    const body = await (await fetch(prom.url + '/api/v1/rules')).json() as { data: { groups: Array<{ rules: Array<{ name: string, health: string, lastEvaluation: string }> }> } }
    return body.data.groups.flatMap((g) => g.rules)
  }
  const evaluated = (r: { lastEvaluation: string }): boolean => !r.lastEvaluation.startsWith('0001')
  await waitFor(async () => { const all = await loadedRules(); return all.length > 0 && all.every(evaluated) }, { timeoutMs: 15_000, what: 'every rule evaluated once' })
  const rules = await loadedRules()
  t.ok(rules.length >= 6, `${rules.length} rules loaded`)
  for (const r of rules) t.equal(r.health, 'ok', `rule ${r.name} evaluates`)
  const alerts = await (await fetch(prom.url + '/api/v1/alerts')).json() as { data: { alerts: Array<{ labels: { alertname: string } }> } }
  t.same(alerts.data.alerts.map((a) => a.labels.alertname), [], 'no alert fires')

  // Every dashboard query runs (Grafana's variables replaced as Grafana would); rate() needs
  // two samples in its range, so wait for a few scrapes first.
  await waitFor(async () => ((await value('count_over_time(up{job="ratelimit-gateway"}[1m])')) ?? 0) >= 3, { timeoutMs: 15_000, what: 'three scrapes' })
  const dashboard = JSON.parse(readFileSync(join(packageRoot(), 'dashboards', 'grafana', 'ratelimit-gateway.json'), 'utf8')) as { panels: Array<{ title: string, targets?: Array<{ expr: string }> }> }
  let withData = 0
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      const expr = target.expr.replaceAll('$instance', '.*').replaceAll('$__rate_interval', '1m').replaceAll('$__range', '5m')
      const result = await prom.query(expr) // throws on a PromQL error
      if (result.length > 0) withData++
      else t.comment('no data: ' + expr)
    }
  }
  t.ok(withData > 10, `${withData} dashboard queries returned data`)
})
