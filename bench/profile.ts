/**
 * Summarises a V8 .cpuprofile (node --cpu-prof): self time by function and by area (the
 * gateway's own code, each package, Node internals, GC, idle), to see where a case's time goes.
 */
import { readFileSync } from 'node:fs'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
}

interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

export interface Frame { name: string, where: string, area: string, selfPct: number }

function areaOf (url: string, name: string): string {
  if (name === '(garbage collector)') return 'gc'
  if (name === '(idle)') return 'idle'
  if (name === '(program)') return 'program (native, unattributed)'
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg !== null) return pkg[1]!
  if (url.startsWith('node:')) return 'node ' + url.slice(5).split('/')[0]
  if (/\/dist\/src\//.test(url)) return 'gateway (src)'
  if (url === '') return 'native'
  return url.replace(/^file:\/\//, '')
}

export function summarise (path: string, top = 15): { frames: Frame[], areas: Array<{ area: string, selfPct: number }>, busyPct: number } {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as Profile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const self = new Map<number, number>()
  let total = 0
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0
    self.set(profile.samples[i]!, (self.get(profile.samples[i]!) ?? 0) + dt)
    total += dt
  }
  const frames = new Map<string, Frame & { us: number }>()
  const areas = new Map<string, number>()
  let idle = 0
  for (const [id, us] of self) {
    const node = byId.get(id)!
    const { functionName, url, lineNumber } = node.callFrame
    const name = functionName === '' ? '(anonymous)' : functionName
    const where = url === '' ? '' : `${url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${lineNumber + 1}`
    const area = areaOf(url, name)
    if (area === 'idle') idle += us
    const key = name + ' ' + where
    const f = frames.get(key) ?? { name, where, area, selfPct: 0, us: 0 }
    f.us += us
    frames.set(key, f)
    areas.set(area, (areas.get(area) ?? 0) + us)
  }
  const pct = (us: number): number => (100 * us) / total
  return {
    frames: [...frames.values()].filter((f) => f.area !== 'idle').sort((a, b) => b.us - a.us).slice(0, top).map((f) => ({ name: f.name, where: f.where, area: f.area, selfPct: pct(f.us) })),
    areas: [...areas.entries()].map(([area, us]) => ({ area, selfPct: pct(us) })).sort((a, b) => b.selfPct - a.selfPct),
    busyPct: 100 - pct(idle)
  }
}
