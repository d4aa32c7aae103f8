/**
 * Prometheus for tests: the text exposition parsed into series, metric names read out of
 * PromQL, the Debian `prometheus`/`promtool` binaries located (a clear failure when missing),
 * and a real Prometheus server started on a free port with its own data directory.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitFor } from './http.ts'
import { freePort } from './private-stores.ts'

interface TapLike { teardown: (fn: () => unknown) => void }

export const INSTALL_HINT = 'install Debian\'s prometheus package: scripts/ensure-prometheus.sh (apt-get install -y --no-install-recommends prometheus)'

/** The path of a Prometheus binary; throws with the install command when it is missing. */
export function requireBinary (name: 'prometheus' | 'promtool'): string {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' })
  const path = found.stdout.trim()
  if (found.status !== 0 || path === '') throw new Error(`${name} not found on PATH: ${INSTALL_HINT}`)
  return path
}

export function promtool (args: string[], input?: string): { status: number | null, output: string } {
  const result = spawnSync(requireBinary('promtool'), args, { input, encoding: 'utf8' })
  return { status: result.status, output: (result.stdout ?? '') + (result.stderr ?? '') }
}

/** `name{labels}` → value, for every sample line of a text exposition. */
export function parseExposition (text: string): Map<string, number> {
  const series = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const cut = line.lastIndexOf(' ')
    series.set(line.slice(0, cut), Number(line.slice(cut + 1)))
  }
  return series
}

/** Every sample name the exposition's `# TYPE` lines promise (histograms: _bucket, _sum, _count). */
export function exportedNames (text: string): Set<string> {
  const names = new Set<string>()
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string]
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s)
    else if (type === 'summary') for (const s of ['', '_sum', '_count']) names.add(name + s)
    else names.add(name)
  }
  return names
}

const GROUPING = /\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan'])

/**
 * The metric names a PromQL expression selects. Strings, label matchers, ranges, grouping
 * lists and offsets are removed first; what is left is functions (followed by "("), keywords,
 * numbers and metric names. Grafana's $variables only occur inside matchers and ranges here.
 */
export function metricNames (expr: string): string[] {
  const inner = /^\s*label_values\(\s*([^,]+),/.exec(expr)
  if (inner !== null) return metricNames(inner[1]!)
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(GROUPING, ' ')
    .replace(/\boffset\s+-?[0-9a-z]+/g, ' ')
    .replace(/#.*$/gm, ' ')
  const names = new Set<string>()
  for (const m of stripped.matchAll(/(?<![\w.:$])[a-zA-Z_:][\w:]*/g)) {
    const after = stripped.slice(m.index + m[0].length).trimStart()
    if (after.startsWith('(') || KEYWORDS.has(m[0].toLowerCase())) continue
    names.add(m[0])
  }
  return [...names]
}


export interface PrometheusServer {
  readonly url: string
  readonly child: ChildProcess
  /** An instant query; the result vector (throws on an API error). */
  query: (promql: string) => Promise<Array<{ metric: Record<string, string>, value: [number, string] }>>
}

/**
 * Starts Prometheus scraping `targets` every `scrapeSeconds`, with `ruleFiles` loaded; stopped
 * and its data directory removed at teardown.
 */
export async function startPrometheus (t: TapLike, options: { targets: string[], ruleFiles?: string[], scrapeSeconds?: number }): Promise<PrometheusServer> {
  const binary = requireBinary('prometheus')
  const dir = mkdtempSync(join(tmpdir(), 'gw-prometheus-'))
  const interval = `${options.scrapeSeconds ?? 1}s`
  const config = [
    'global:',
    `  scrape_interval: ${interval}`,
    `  scrape_timeout: ${interval}`,
    `  evaluation_interval: ${interval}`,
    `rule_files: ${JSON.stringify(options.ruleFiles ?? [])}`,
    'scrape_configs:',
    '  - job_name: ratelimit-gateway',
    `    static_configs: [{ targets: ${JSON.stringify(options.targets)} }]`
  ].join('\n') + '\n'
  writeFileSync(join(dir, 'prometheus.yml'), config)
  const port = await freePort()
  const output: string[] = []
  const child = spawn(binary, [
    `--config.file=${join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--log.level=warn'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout!.on('data', (c: Buffer) => output.push(c.toString('utf8')))
  child.stderr!.on('data', (c: Buffer) => output.push(c.toString('utf8')))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
    rmSync(dir, { recursive: true, force: true })
  })
  const url = `http://127.0.0.1:${port}`
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${output.join('')}`)
    return await fetch(url + '/-/ready').then((r) => r.ok, () => false)
  }, { timeoutMs: 20_000, what: 'Prometheus to be ready' })

  const query = async (promql: string): Promise<Array<{ metric: Record<string, string>, value: [number, string] }>> => {
    const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`)
    const body = await res.json() as { status: string, error?: string, data?: { resultType: string, result: Array<{ metric: Record<string, string>, value: [number, string] }> } }
    if (body.status !== 'success') throw new Error(`query ${promql}: ${body.error ?? res.status}`)
    return body.data!.resultType === 'vector' ? body.data!.result : []
  }
  return { url, child, query }
}
