// The container image and the compose stack. No Docker engine runs here, so: docker-compose.yml
// is checked by a real Compose parser (Debian's docker-compose, `config`), the Prometheus config
// by promtool, and the Dockerfile by reading it and running what its runtime stage runs (the
// gateway from the files it copies, its HEALTHCHECK command, the demo upstream).
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { packageRoot } from '../src/core/package.ts'
import { startTestGateway } from './helpers/gateway.ts'
import { waitFor } from './helpers/http.ts'
import { freePort } from './helpers/private-stores.ts'

const root = packageRoot()
type Tree = Record<string, any>

function requireTool (t: { fail: (message: string) => void }, tool: string, hint: string): boolean {
  const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).status === 0
  if (!found) t.fail(`${tool} is not installed: ${hint} (.ci/setup.d/deploy-tools.sh installs it)`)
  return found
}


t.test('docker-compose.yml passes a real Compose parser and wires the stack', async (t) => {
  if (!requireTool(t, 'docker-compose', 'apt-get install docker-compose')) return
  const run = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config'], { cwd: root, encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } })
  t.equal(run.status, 0, `docker-compose config accepts the file${run.status !== 0 ? ':\n' + run.stderr : ''}`)
  if (run.status !== 0) return
  const { services, volumes } = parseYaml(run.stdout) as { services: Tree, volumes: Tree }

  t.same(Object.keys(services).sort(), ['gateway-1', 'gateway-2', 'grafana', 'postgres', 'prometheus', 'redis', 'upstream'], 'the seven services')
  for (const name of ['gateway-1', 'gateway-2']) {
    const gw = services[name]
    t.equal(gw.build, undefined, `${name} is not built again`)
    t.equal(gw.image, services.upstream.image, `${name} runs the image the upstream service builds`)
    t.equal(gw.pull_policy, 'never', `${name}: the local image, never pulled`)
    t.equal(gw.init, true, `${name}: an init process reaps and forwards signals`)
    t.match(gw.environment, {
      DATABASE_URL: /^postgres:\/\/gateway:[^@]+@postgres:5432\/ratelimit$/,
      REDIS_URL: 'redis://redis:6379',
      UPSTREAM_URL: 'http://upstream:3000',
      CONTROL_HOST: '0.0.0.0',
      DATABASE_EMBEDDED: 'never'
    }, `${name}: shares the stores, forwards to the demo upstream, control port reachable by Prometheus`)
    t.match(gw.depends_on, { postgres: { condition: 'service_healthy' }, redis: { condition: 'service_healthy' } }, `${name} waits for healthy stores`)
    const published = (gw.ports as Array<string | Tree>).map((p) => typeof p === 'string' ? p : `${p.published}:${p.target}`)
    t.ok(published.some((p) => /^127\.0\.0\.1:\d+:9090/.test(p)), `${name}: control port published on the host's loopback only`)
  }
  t.ok(services.postgres.healthcheck && services.redis.healthcheck, 'the stores have health checks to wait on')
  t.match(services.upstream.command, ['node', 'dist/src/cli/demo-upstream.js'], 'demo upstream from the same image')
  t.equal(services.upstream.build.context, root, "the image is built once, from this repository's Dockerfile")
  t.same(Object.keys(services).filter((n) => services[n].build !== undefined), ['upstream'], 'one build for the whole stack')
  t.ok(volumes.pgdata !== undefined, 'PostgreSQL data on a named volume')

  // Every bind mount names a file or folder of this repository.
  // Short syntax ("source:target:mode") from docker-compose 1.x, long syntax from Compose v2.
  const mounts = ['prometheus', 'grafana'].flatMap((s) => (services[s].volumes as Array<string | Tree>).map((v) => {
    if (typeof v !== 'string') return { service: s, source: v.type === 'bind' ? v.source as string : '', target: v.target as string }
    const [source, target] = v.split(':') as [string, string]
    return { service: s, source: source.startsWith('/') ? source : '', target }
  }).filter((m) => m.source !== ''))
  t.same(mounts.map((m) => [m.service, relative(root, m.source), m.target]), [
    ['prometheus', 'deploy/compose/prometheus.yml', '/etc/prometheus/prometheus.yml'],
    ['prometheus', 'dashboards/prometheus/alerts.yml', '/etc/prometheus/alerts.yml'],
    ['grafana', 'dashboards/grafana/provisioning/datasources', '/etc/grafana/provisioning/datasources'],
    ['grafana', 'dashboards/grafana/provisioning/dashboards', '/etc/grafana/provisioning/dashboards'],
    ['grafana', 'dashboards/grafana', '/var/lib/grafana/dashboards/ratelimit-gateway']
  ], 'Prometheus gets its config and the alert rules; Grafana its datasource, provider and dashboards')
  for (const m of mounts) t.ok(existsSync(m.source), `${m.service} mounts ${relative(root, m.source)}, which exists`)
  t.equal(services.grafana.environment.PROMETHEUS_URL, 'http://prometheus:9090', 'the provisioned datasource points at the prometheus service')

  // The provisioning files agree with where compose puts things.
  const provider = parseYaml(readFileSync(join(root, 'dashboards/grafana/provisioning/dashboards/ratelimit-gateway.yaml'), 'utf8')) as Tree
  t.equal(provider.providers[0].options.path, '/var/lib/grafana/dashboards/ratelimit-gateway', 'the dashboard provider reads the mounted folder')
  const datasource = parseYaml(readFileSync(join(root, 'dashboards/grafana/provisioning/datasources/prometheus.yaml'), 'utf8')) as Tree
  t.equal(datasource.datasources[0].url, '${PROMETHEUS_URL}', 'the datasource URL comes from PROMETHEUS_URL')
  t.ok(readdirSync(join(root, 'dashboards/grafana')).some((f) => f.endsWith('.json')), 'a dashboard JSON is in the mounted folder')

  // The parser is real: a wrong key and a dangling dependency are refused.
  const dir = mkdtempSync(join(tmpdir(), 'rl-compose-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const text = readFileSync(join(root, 'docker-compose.yml'), 'utf8')
  for (const [what, broken] of [
    ['an unknown option', text.replace('    image: redis:7.4-alpine', '    imagee: redis:7.4-alpine')],
    ['a dependency on a missing service', text.replace('      - gateway-2\n', '      - gateway-3\n')]
  ] as const) {
    t.not(broken, text, `mutation applied: ${what}`)
    writeFileSync(join(dir, 'docker-compose.yml'), broken)
    const bad = spawnSync('docker-compose', ['-f', join(dir, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8' })
    t.not(bad.status, 0, `a file with ${what} is rejected`)
  }
})

t.test('the compose Prometheus config scrapes both replicas and loads the rules', async (t) => {
  const config = parseYaml(readFileSync(join(root, 'deploy/compose/prometheus.yml'), 'utf8')) as Tree
  t.same(config.scrape_configs[0].static_configs[0].targets, ['gateway-1:9090', 'gateway-2:9090'], 'targets are the two gateway services\' control ports')
  t.same(config.rule_files, ['/etc/prometheus/alerts.yml'], 'rules at the path compose mounts dashboards/prometheus/alerts.yml on')
  if (!requireTool(t, 'promtool', 'apt-get install prometheus')) return
  // promtool reads the rule files too: point it at the repository's copy.
  const dir = mkdtempSync(join(tmpdir(), 'rl-prom-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const local = { ...config, rule_files: [join(root, 'dashboards/prometheus/alerts.yml')] }
  const base = parseYaml(readFileSync(join(root, 'dashboards/prometheus/prometheus.yml'), 'utf8')) as Tree
  t.equal(config.scrape_configs[0].job_name, base.scrape_configs[0].job_name, 'same job name as dashboards/prometheus/prometheus.yml (the alert rules select on it)')
  writeFileSync(join(dir, 'prometheus.yml'), JSON.stringify(local))
  const check = spawnSync('promtool', ['check', 'config', join(dir, 'prometheus.yml')], { encoding: 'utf8' })
  t.equal(check.status, 0, `promtool check config${check.status !== 0 ? ':\n' + check.stdout + check.stderr : ''}`)
})

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function instructions (text: string): Array<{ op: string, args: string }> {
  const joined = text.replace(/\\\n/g, ' ')
  return joined.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => {
    const m = /^(\S+)\s*(.*)$/.exec(l)!
    return { op: m[1]!.toUpperCase(), args: m[2]! }
  })
}

t.test('the Dockerfile: multi-stage, non-root, health check, exec-form entry', async (t) => {
  const steps = instructions(readFileSync(join(root, 'Dockerfile'), 'utf8'))
  const froms = steps.filter((s) => s.op === 'FROM')
  t.ok(froms.length >= 2, 'multi-stage')
  const lastFrom = steps.lastIndexOf(froms[froms.length - 1]!)
  const runtime = steps.slice(lastFrom)
  t.match(froms[froms.length - 1]!.args, /slim|alpine|NODE_IMAGE/, 'runtime stage from a small base')
  t.ok(steps.some((s) => s.op === 'ARG' && /NODE_IMAGE=node:(22|24)-[a-z]+-slim|NODE_IMAGE=node:(22|24)-alpine/.test(s.args)), 'the base is a maintained Node LTS, slim')
  const user = runtime.filter((s) => s.op === 'USER').pop()
  t.ok(user !== undefined && !/^(root|0)(:|$)/.test(user.args), `runs as a non-root user (${user?.args})`)
  t.notOk(runtime.some((s) => s.op === 'RUN' && /npm (ci|install)(?!.*--omit=dev)/.test(s.args)), 'no dev install in the runtime stage')
  const health = runtime.find((s) => s.op === 'HEALTHCHECK')
  t.match(health?.args, /CMD \["node", "dist\/src\/cli\/healthcheck\.js"\]/, 'HEALTHCHECK runs the health check script')
  const cmd = runtime.filter((s) => s.op === 'CMD').pop()
  const argv = JSON.parse(cmd!.args) as string[]
  t.ok(argv[0] === 'node' && argv.at(-1) === 'dist/src/main.js' && argv.slice(1, -1).every((a) => a.startsWith('--')), `exec-form CMD: node (with its flags only) is the process that gets SIGTERM: ${cmd!.args}`)
  t.notOk(runtime.some((s) => s.op === 'ENTRYPOINT'), 'no wrapper entrypoint between the signal and node')

  // Every COPY source from the build context exists and is not excluded by .dockerignore.
  const ignored = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
  const sources = steps.filter((s) => s.op === 'COPY' && !s.args.includes('--from=')).flatMap((s) => s.args.split(/\s+/).filter((a) => !a.startsWith('--')).slice(0, -1))
  t.ok(sources.length > 0)
  for (const source of sources) {
    t.ok(existsSync(join(root, source)), `COPY ${source}: exists`)
    t.notOk(ignored.some((pattern) => source === pattern || source.startsWith(pattern + '/')), `COPY ${source}: not in .dockerignore`)
  }
  // The runtime stage holds what the gateway reads at run time besides dist/ and node_modules/.
  const runtimeCopies = runtime.filter((s) => s.op === 'COPY').map((s) => s.args)
  for (const needed of ['package.json', 'config', 'migrations', '/app/dist', '/app/node_modules']) {
    t.ok(runtimeCopies.some((a) => a.split(/\s+/).includes(needed)), `runtime stage copies ${needed}`)
  }
})

t.test('the runtime image prunes dev dependencies: nothing the gateway imports is one', async (t) => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  const seen = new Set<string>()
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith('.js')) {
        const text = readFileSync(path, 'utf8')
        const statics = text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s*['"]([^'".][^'"]*)['"]/gm)
        const dynamics = text.matchAll(/\bimport\(\s*['"]([^'".][^'"]*)['"]\s*\)/g)
        for (const m of [...statics, ...dynamics]) {
          const spec = m[1]!
          if (spec.startsWith('node:')) continue
          seen.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!)
        }
      }
    }
  }
  walk(join(root, 'dist', 'src'))
  t.ok(seen.size > 3, `found the gateway's imports (${[...seen].join(', ')})`)
  for (const name of seen) t.ok(name in pkg.dependencies, `${name} is a runtime dependency`)
})

t.test('the HEALTHCHECK command', async (t) => {
  const gw = await startTestGateway(t)
  const controlPort = String(new URL(gw.controlUrl).port)
  // Asynchronous: the gateway answering the probe runs in this process.
  const healthcheck = async (env: Record<string, string>): Promise<{ status: number | null, stderr: string }> => {
    const child = spawn(process.execPath, ['dist/src/cli/healthcheck.js'], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.on('data', (c: Buffer) => { stderr += c.toString() })
    const status = await new Promise<number | null>((resolve) => child.once('exit', resolve))
    return { status, stderr }
  }
  t.equal((await healthcheck({ CONTROL_PORT: controlPort })).status, 0, 'healthy gateway: exit 0')
  t.equal((await healthcheck({ CONTROL_PORT: controlPort, CONTROL_HOST: '0.0.0.0' })).status, 0, 'CONTROL_HOST=0.0.0.0 (compose): probes loopback, exit 0')
  const dead = await healthcheck({ CONTROL_PORT: String(await freePort()) })
  t.equal(dead.status, 1, 'nothing listening: exit 1')
  t.match(dead.stderr, /healthcheck: /, 'and says why')
})

t.test('the demo upstream of the compose stack', async (t) => {
  const port = await freePort()
  const child = spawn(process.execPath, ['dist/src/cli/demo-upstream.js'], { cwd: root, env: { PATH: process.env.PATH ?? '', PORT: String(port), HOST: '127.0.0.1' }, stdio: 'ignore' })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const res = await waitFor(async () => await fetch(`http://127.0.0.1:${port}/hello?x=1`).catch(() => null), { what: 'demo upstream' })
  t.match(await res!.json(), { method: 'GET', url: '/hello?x=1' }, 'echoes the request')
  child.kill('SIGTERM')
  const [code] = await new Promise<[number | null]>((resolve) => child.once('exit', (c) => resolve([c])))
  t.equal(code, 0, 'SIGTERM: exit 0')
})
