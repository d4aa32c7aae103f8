/**
 * One timeline per fault as SVG, rendered headless (vega-lite compiled to vega, vega's View with
 * renderer 'none'): allowed and refused per 100 ms, by X-Data-Source, stacked; the fault's
 * window shaded. Areas, not bars: one path per series keeps the files small.
 */
import * as vega from 'vega'
import * as vl from 'vega-lite'
import type { RequestRecord } from './checker.ts'

const BIN_MS = 100

export interface TimelineInput {
  title: string
  records: RequestRecord[]
  /** Times relative to this origin are plotted, in seconds. */
  originMs: number
  faultStartMs: number
  faultEndMs: number
  allowedStatuses?: number[]
}

function outcome (r: RequestRecord, allowed: number[]): string {
  if (allowed.includes(r.status)) return `allowed ${r.source || '-'}`
  if (r.status === 429) return `refused ${r.source || '-'}`
  if (r.status === 0) return `error ${r.error ?? 'network'}`
  return `${r.status}`
}

export async function timelineSvg (input: TimelineInput): Promise<string> {
  const allowed = input.allowedStatuses ?? [200, 201, 204]
  const counts = new Map<string, number>()
  const series = new Set<string>()
  let lastBin = 0
  for (const r of input.records) {
    const bin = Math.floor((r.answeredMs - input.originMs) / BIN_MS)
    const s = outcome(r, allowed)
    series.add(s)
    lastBin = Math.max(lastBin, bin)
    counts.set(`${bin}\u0000${s}`, (counts.get(`${bin}\u0000${s}`) ?? 0) + 1)
  }
  const values: Array<{ t: number, n: number, series: string }> = []
  for (const s of series) {
    for (let bin = 0; bin <= lastBin; bin++) values.push({ t: Math.round(bin * BIN_MS) / 1000, n: counts.get(`${bin}\u0000${s}`) ?? 0, series: s })
  }
  const spec: vl.TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: input.title,
    width: 640,
    height: 180,
    layer: [
      {
        data: { values: [{ a: (input.faultStartMs - input.originMs) / 1000, b: (input.faultEndMs - input.originMs) / 1000 }] },
        mark: { type: 'rect', color: '#f4c7c3', opacity: 0.6 },
        encoding: { x: { field: 'a', type: 'quantitative' }, x2: { field: 'b' } }
      },
      {
        data: { values },
        mark: { type: 'area', interpolate: 'step-after' },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'seconds (fault shaded)' },
          y: { field: 'n', type: 'quantitative', stack: 'zero', title: 'requests per 100 ms' },
          color: { field: 'series', type: 'nominal', title: 'outcome, X-Data-Source', legend: { labelLimit: 240 } }
        }
      }
    ]
  }
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' })
  const svg = await view.toSVG()
  view.finalize()
  // Two decimals are plenty at this size.
  return svg.replace(/(\d+\.\d{2})\d+/g, '$1')
}
