// dashboards/: the alert rules and the scrape config pass promtool (including the rules' own unit
// tests), and every metric name a dashboard panel or an alert uses is one the gateway exports.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { packageRoot } from '../src/core/package.ts'
import { Metrics } from '../src/observability/metrics.ts'
import { exportedNames, metricNames, promtool } from './helpers/prometheus.ts'

const root = packageRoot()
const path = (p: string): string => join(root, 'dashboards', p)

interface Target { expr: string, datasource?: { uid?: string } }
interface Panel { id: number, type: string, title: string, datasource?: { type?: string, uid?: string }, targets?: Target[], panels?: Panel[] }
interface Variable { name: string, type: string, query: unknown, definition?: string, datasource?: { uid?: string }, current?: { value?: unknown } }
interface Dashboard { uid: string, title: string, panels: Panel[], templating: { list: Variable[] } }
interface Rule { alert?: string, record?: string, expr: string, labels?: Record<string, string> }

const dashboard = JSON.parse(readFileSync(path('grafana/ratelimit-gateway.json'), 'utf8')) as Dashboard
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row')
const rules = (parseYaml(readFileSync(path('prometheus/alerts.yml'), 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules)

t.test('the PromQL name reader', async (t) => {
  t.same(metricNames('histogram_quantile(0.99, sum by (le, source) (rate(a_seconds_bucket{instance=~"$instance",x="by (q)"}[$__rate_interval])))'), ['a_seconds_bucket'])
  t.same(metricNames('sum(rate(a_total[5m] offset 1h)) / on (instance) group_left sum without (x) (b) > 2 * c and d unless e or 1e-3'), ['a_total', 'b', 'c', 'd', 'e'])
  t.same(metricNames('label_values(gateway_build_info, instance)'), ['gateway_build_info'])
  t.same(metricNames('up{job="x"} == 0'), ['up'])
})

t.test('the alert rules and the scrape config pass promtool, and the rules\' unit tests pass', async (t) => {
  const rulesCheck = promtool(['check', 'rules', path('prometheus/alerts.yml')])
  t.equal(rulesCheck.status, 0, rulesCheck.output)
  t.match(rulesCheck.output, /SUCCESS: \d+ rules found/)
  const unit = promtool(['test', 'rules', path('prometheus/alerts.test.yml')])
  t.equal(unit.status, 0, unit.output)
  const config = promtool(['check', 'config', path('prometheus/prometheus.yml')])
  t.equal(config.status, 0, config.output)
})

t.test('every metric name in a panel, a variable or an alert is exported by the gateway', async (t) => {
  const exported = exportedNames(await new Metrics().registry.metrics())
  t.ok(exported.has('gateway_decisions_total') && exported.has('gateway_decision_duration_seconds_bucket'), 'read the exposition')
  const used = new Set<string>()
  const check = (where: string, expr: string, allowed: (name: string) => boolean): void => {
    const names = metricNames(expr)
    t.ok(names.length > 0, `${where} selects at least one metric`)
    for (const name of names) {
      used.add(name)
      t.ok(allowed(name), `${where}: ${name} is ${exported.has(name) ? 'exported' : 'NOT exported by the gateway'}`)
    }
  }
  for (const p of panels) for (const target of p.targets ?? []) check(`panel "${p.title}"`, target.expr, (n) => exported.has(n))
  for (const v of dashboard.templating.list) if (v.type === 'query') check(`variable ${v.name}`, v.definition!, (n) => exported.has(n))
  // `up` is the one series Prometheus itself writes for every target.
  for (const r of rules) check(`rule ${r.alert ?? r.record}`, r.expr, (n) => exported.has(n) || n === 'up')

  const families = [...exported].filter((n) => n.startsWith('gateway_')).map((n) => n.replace(/_(bucket|sum|count)$/, ''))
  for (const family of new Set(families)) {
    t.ok([...used].some((n) => n.startsWith(family)), `${family} appears on the dashboard or in an alert`)
  }
})

t.test('the dashboard: datasource and instance variables, every panel on them, the required views', async (t) => {
  const provisioned = parseYaml(readFileSync(path('grafana/provisioning/datasources/prometheus.yaml'), 'utf8')) as { datasources: Array<{ uid: string, type: string }> }
  const uid = provisioned.datasources[0]!.uid
  t.equal(provisioned.datasources[0]!.type, 'prometheus')
  const ds = dashboard.templating.list.find((v) => v.name === 'datasource')
  t.match(ds, { type: 'datasource', query: 'prometheus', current: { value: uid } }, 'defaults to the provisioned datasource uid')
  const instance = dashboard.templating.list.find((v) => v.name === 'instance')
  t.match(instance, { type: 'query', datasource: { uid: '${datasource}' } })
  t.equal(dashboard.uid, 'ratelimit-gateway', 'a stable uid for links')

  const ids = panels.map((p) => p.id)
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique')
  for (const p of panels) {
    t.equal(p.datasource?.uid, '${datasource}', `panel "${p.title}" uses the datasource variable`)
    t.ok((p.targets ?? []).length > 0, `panel "${p.title}" has queries`)
    for (const target of p.targets ?? []) {
      t.equal(target.datasource?.uid, '${datasource}', `a query of "${p.title}" uses the datasource variable`)
      t.match(target.expr, /instance=~"\$instance"/, `a query of "${p.title}" follows the instance variable`)
    }
  }
  const titles = panels.map((p) => p.title)
  for (const wanted of [/decisions per second by result/i, /block ratio/i, /cache hit ratio/i, /decision latency p50 \/ p95 \/ p99/i,
    /store up/i, /store error/i, /upstream latency/i, /status class/i, /fail-mode|fail-open/i]) {
    t.ok(titles.some((title) => wanted.test(title)), `a panel for ${wanted}`)
  }
  const p99 = panels.find((p) => /decision latency p50/i.test(p.title))!
  t.same(p99.targets!.map((x) => /histogram_quantile\(([\d.]+)/.exec(x.expr)?.[1]), ['0.5', '0.95', '0.99'])

  const provider = parseYaml(readFileSync(path('grafana/provisioning/dashboards/ratelimit-gateway.yaml'), 'utf8')) as { providers: Array<{ type: string, options: { path: string } }> }
  t.match(provider.providers[0], { type: 'file', options: { path: /\// } })
})

t.test('the alert rules cover the required conditions', async (t) => {
  const byName = new Map(rules.filter((r) => r.alert !== undefined).map((r) => [r.alert!, r]))
  for (const [name, pattern] of [
    ['GatewayRedisDown', /gateway_store_up\{store="redis"\} == 0/],
    ['GatewayPostgresDown', /gateway_store_up\{store="postgres"\} == 0/],
    ['GatewayStoreErrorRateHigh', /gateway_store_errors_total/],
    ['GatewayDecisionLatencyHigh', /histogram_quantile\(0\.99,.*gateway_decision_duration_seconds_bucket/s],
    ['GatewayBlockRatioSpike', /result="blocked"/],
    ['GatewayFailOpen', /gateway_fail_mode_events_total\{mode="open"\}/]
  ] as const) {
    t.match(byName.get(name)?.expr, pattern, name)
    t.ok(byName.get(name)?.labels?.severity, `${name} has a severity`)
  }
})
