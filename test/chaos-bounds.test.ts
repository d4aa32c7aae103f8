// The chaos suite's pure parts: each consistency mode's stated bound per fault, whether the
// gateway knows a mode (write-behind is refused on a branch without it), the runner's
// arguments, and the network-namespace naming and clean-up parsing.
import t from 'tap'
import { ENVIRONMENT, loadConfigWithSources } from '../src/config/load.ts'
import { modeSupport, statedBound, type BoundSetting } from '../scripts/chaos/bounds.ts'
import { ModeUnavailableError, parseArgs, selectModes } from '../scripts/chaos/run.ts'
import { namesFor, pickSubnet, staleLinks, staleNamespaces } from '../scripts/lib/netns.ts'

const setting: BoundSetting = { capacity: 5, ratePerSecond: 2, gateways: 3, syncIntervalMs: 1000, probeIntervalMs: 500 }

t.test('strict: 0 (the take-over fence), one request per other gateway without it, plus the local share when cut off from both', async (t) => {
  t.same(statedBound('strict', {}, 5000, setting), { bound: 0, text: '0' })
  t.equal(statedBound('strict', { redisLosesData: true }, 5000, setting).bound, 0, 'Redis losing data costs strict nothing')
  t.same(statedBound('strict', {}, 5000, { ...setting, fenceOff: true }), { bound: 2, text: '2 (switch, no fence)' })
  const both = statedBound('strict', { localFailMode: true }, 5000, setting)
  t.ok(Math.abs(both.bound - (5 / 3 + (2 / 3) * 5.5)) < 1e-9, `C/3 + r/3·(T + 0.5 s) = ${both.bound}`)
  t.equal(both.text, 'C/3 + r/3·(T+0.5 s)')
  t.equal(statedBound('strict', {}, 0, { ...setting, gateways: 1, fenceOff: true }).bound, 0, 'one gateway: no switch between gateways')
  const silent = statedBound('strict', { localFailMode: true, silentPartition: true }, 5000, setting)
  t.ok(Math.abs(silent.bound - (5 / 3 + (2 / 3) * (5 + 0.5 + 3.2))) < 1e-9, `a silent partition adds TCP's retry back-off: ${silent.bound}`)
  t.equal(statedBound('strict', { redisSplit: true }, 5000, setting).bound, 0, 'strict: a split over Redis costs nothing (PostgreSQL decides)')
})

t.test('write-behind: one sync interval of spending when Redis loses data, 0 otherwise', async (t) => {
  t.same(statedBound('write-behind', {}, 5000, setting), { bound: 0, text: '0' })
  const lost = statedBound('write-behind', { redisLosesData: true }, 200, setting)
  t.equal(lost.bound, 5 + 2 * 1, 'C + r·I: the most a caller can spend in one interval')
  t.equal(lost.text, 'C + r·1 s (one sync interval)')
  t.equal(statedBound('write-behind', { redisLosesData: true }, 200, { ...setting, syncIntervalMs: 250 }).bound, 5.5, 'scales with the interval')
  t.same(statedBound('write-behind', { redisSplit: true }, 5000, setting), { bound: 5 + 2 * 5, text: 'C + r·T (split between the stores)' }, 'gateways split over Redis: one more bucket for the time of the split')
  const both = statedBound('write-behind', { localFailMode: true }, 5000, setting)
  t.ok(Math.abs(both.bound - (5 / 3 + (2 / 3) * 5.5)) < 1e-9, 'the local share alone')
})

t.test('modeSupport: strict always; write-behind only where the configuration carries it', async (t) => {
  const none = [['PORT', 'proxy.port', 'int']] as const
  const never = (): unknown => { throw new Error('not called') }
  t.same(modeSupport('strict', none, never, 1000), { ok: true, env: {} }, 'a gateway without CONSISTENCY is strict')
  const missing = modeSupport('write-behind', none, never, 1000)
  t.notOk(missing.ok)
  t.match(!missing.ok && missing.reason, /does not read CONSISTENCY/)
  const env = [['CONSISTENCY', 'limits.consistency', 'string'], ['SYNC_INTERVAL_MS', 'limits.syncIntervalMs', 'int']] as const
  t.same(modeSupport('strict', env, never, 1000), { ok: true, env: { CONSISTENCY: 'strict' } }, 'and CONSISTENCY=strict where it is read')
  const load = (e: Record<string, string>): unknown => ({ limits: { consistency: e.CONSISTENCY, syncIntervalMs: Number(e.SYNC_INTERVAL_MS) } })
  t.same(modeSupport('write-behind', env, load, 250), { ok: true, env: { CONSISTENCY: 'write-behind', SYNC_INTERVAL_MS: '250' } })
  const refuses = modeSupport('write-behind', env, () => { throw new Error('invalid configuration:\n  limits.consistency: Invalid option') }, 250)
  t.match(!refuses.ok && refuses.reason, /refuses CONSISTENCY=write-behind SYNC_INTERVAL_MS=250: invalid configuration: limits.consistency: Invalid option/)
  const ignores = modeSupport('write-behind', env, () => ({ limits: { consistency: 'strict', syncIntervalMs: 250 } }), 250)
  t.match(!ignores.ok && ignores.reason, /loads as "strict"/)
  t.notOk(modeSupport('write-behind', [env[0]], load, 250).ok, 'no SYNC_INTERVAL_MS: no bound')
})

t.test('this build: --mode write-behind is refused clearly, --mode all skips it with the reason', async (t) => {
  const knows = ENVIRONMENT.some(([name]) => name === 'CONSISTENCY')
  const support = modeSupport('write-behind', ENVIRONMENT, (env) => loadConfigWithSources({ env }).config, 1000)
  if (knows && support.ok) {
    t.same(selectModes('all', 1000).run.map((m) => m.name), ['strict', 'write-behind'], 'the gateway knows write-behind: both run')
    return
  }
  t.throws(() => selectModes('write-behind', 1000), ModeUnavailableError)
  t.throws(() => selectModes('write-behind', 1000), /--mode write-behind: .*CONSISTENCY/)
  const all = selectModes('all', 1000)
  t.same(all.run.map((m) => m.name), ['strict'])
  t.same(all.skipped.map((s) => s.mode), ['write-behind'])
})

t.test('parseArgs', async (t) => {
  t.same(parseArgs(['--quick', '--mode', 'strict', '--sync-interval-ms', '250', '--no-netns']), { quick: true, mode: 'strict', syncIntervalMs: 250, noNetns: true })
  t.throws(() => parseArgs(['--mode', 'eventual']), /one of strict, write-behind, all/)
  t.throws(() => parseArgs(['--sync-interval-ms', '0']), /positive integer/)
  t.throws(() => parseArgs(['--only']), /needs a value/)
})

t.test('netns names fit in 15-byte interface names and parse back for clean-up', async (t) => {
  const n = namesFor('gwchaos', 4194304, 35) // the largest pid Linux hands out, a two-digit counter
  for (const link of [n.hostLink, n.nsLink, n.deadLink, n.deadPeer]) t.ok(link.length <= 15, `${link}: ${link.length} bytes`)
  t.equal(n.namespace, 'gwchaos-4194304-z')
  const alive = (pid: number): boolean => pid === 42
  const list = 'gwchaos-42-0 (id: 1)\ngwchaos-7-0 (id: 0)\ngwchaos-7-a\nother-7-0\ngwchaosx-7-0\n'
  t.same(staleNamespaces(list, 'gwchaos', alive), ['gwchaos-7-0', 'gwchaos-7-a'], 'dead pids only, our prefix only')
  const links = [
    '1: lo: <LOOPBACK,UP> mtu 65536',
    `8: ${namesFor('gwchaos', 7, 0).hostLink}@if7: <BROADCAST> mtu 1500`,
    `9: ${namesFor('gwchaos', 42, 0).hostLink}@if2: <BROADCAST> mtu 1500`,
    '10: gwc7n0: <BROADCAST> mtu 1500' // a namespace-side name never shows in the root namespace; not ours to remove there
  ].join('\n')
  t.same(staleLinks(links, alive), ['gwc7h0'])
})

t.test('pickSubnet avoids every 10.231.X in use, starting at the seed', async (t) => {
  t.equal(pickSubnet(['127.0.0.1/8', '192.0.2.2/24'], 5), 5)
  t.equal(pickSubnet(['10.231.5.1/24', '10.231.6.3/32'], 5), 7)
  t.equal(pickSubnet(['10.231.255.1/24'], 255), 0, 'wraps around')
  t.equal(pickSubnet(Array.from({ length: 256 }, (_, x) => `10.231.${x}.1/24`), 0), null)
})
