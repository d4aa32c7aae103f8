// The chaos suite's checker on synthetic histories: exact windows, the bound itself passes,
// refusals with tokens available are counted, clock uncertainty is honoured.
import t from 'tap'
import { checkPhase, overAdmission, percentile, wrongRefusals, type RequestRecord } from '../scripts/chaos/checker.ts'

const limits = { capacity: 5, ratePerSecond: 1, clockUncertaintyMs: 0 }

function req (sentMs: number, status: number, answeredMs = sentMs + 2, cost = 1): RequestRecord {
  return { caller: 'c', gateway: 0, sentMs, answeredMs, status, source: 'postgres', cost }
}

/** A burst of `capacity` at t = 0, then one allowance per second: exactly the bound. */
function atTheBound (): RequestRecord[] {
  const out: RequestRecord[] = []
  for (let i = 0; i < 5; i++) out.push(req(0, 201, 0))
  for (let s = 1; s <= 10; s++) out.push(req(s * 1000, 201, s * 1000))
  return out
}

t.test('a history exactly at the bound passes', async (t) => {
  const over = overAdmission(atTheBound(), limits)
  t.ok(over.excess <= 1e-9, `excess ${over.excess}`)
  t.equal(over.excess, 0, 'the burst window meets the bound exactly')
})

t.test('an excess of one request in one window is found', async (t) => {
  const history = atTheBound()
  history.push(req(5500, 201, 5500)) // one more, half a second after an allowance
  const over = overAdmission(history, limits)
  t.ok(over.excess > 0.4 && over.excess <= 1, `excess ${over.excess.toFixed(3)}`)
  t.equal(over.windowEndMs - over.windowStartMs <= 10_000, true, 'a window inside the history')
  // The same extra request within a widened interval that covers the refill it needs is not proof.
  const loose = overAdmission(history, { ...limits, clockUncertaintyMs: 600 })
  t.ok(loose.excess < over.excess, 'clock uncertainty lowers the certain excess')
})

t.test('an allowance only counts in windows it certainly falls in', async (t) => {
  // Five allowed at once, then a sixth whose answer came 2 s later: it may have been decided
  // after a token refilled, so it proves nothing.
  const history = [0, 0, 0, 0, 0].map((s) => req(s, 201, s + 1))
  history.push(req(0, 201, 2000))
  t.ok(overAdmission(history, limits).excess <= 0, 'slow answer: no proof')
  history.push(req(1, 201, 3))
  t.ok(overAdmission(history, limits).excess > 0.9, 'a seventh, fast: proven')
})

t.test('cost weighting', async (t) => {
  const history = [req(0, 201, 1, 3), req(1, 201, 2, 3)]
  t.ok(Math.abs(overAdmission(history, limits).excess - 1) < 0.01, 'two allowances of cost 3 exceed 5 by 1')
})

t.test('a refusal with tokens available is counted', async (t) => {
  const history = [req(0, 201), req(10, 201), req(20, 429)] // 3 tokens left at t = 20
  t.equal(wrongRefusals(history, limits).length, 1, 'refused with 3 tokens left')
  const spent = [0, 1, 2, 3, 4].map((s) => req(s, 201))
  spent.push(req(10, 429))
  t.equal(wrongRefusals(spent, limits).length, 0, 'refused when empty: right')
  spent.push(req(1500, 429, 1502))
  t.equal(wrongRefusals(spent, limits).length, 1, 'refused 1.5 s later with a token refilled: wrong')
  t.equal(wrongRefusals(spent, { ...limits, clockUncertaintyMs: 600 }).length, 0, 'unless the clock uncertainty could eat the refill')
  // An allowance still in flight when the refusal was decided may have taken the last token.
  const inflight = [0, 1, 2, 3].map((s) => req(s, 201))
  inflight.push(req(5, 201, 50))
  inflight.push(req(10, 429, 12))
  t.equal(wrongRefusals(inflight, limits).length, 0, 'an in-flight allowance is charged first')
})

t.test('checkPhase: failures, explanation, latency', async (t) => {
  const records = [...atTheBound(), req(2000, 503), { ...req(3000, 0), error: 'ECONNREFUSED', gateway: 1 }]
  const figures = checkPhase(records, limits, { startMs: 0, endMs: 2000 }, { startMs: 2000, endMs: 4000 }, (r) => r.gateway === 1)
  t.equal(figures.failed, 1, 'the 503 is unexplained')
  t.equal(figures.explainedFailures, 1, 'the refused connection to the killed gateway is explained')
  t.equal(figures.overAdmission, 0)
  t.equal(figures.overAdmittedCaller, null)
  t.equal(percentile([1, 2, 3, 4, 100], 99), 100)
})

t.test('a slow allowance may have taken its token late: the refusal after it is not wrong', async (t) => {
  const one = { capacity: 1, ratePerSecond: 1, clockUncertaintyMs: 0 }
  // Allowed, answered 600 ms later: it may have been charged at 600, so at 1100 half a token.
  const history = [req(0, 201, 600), req(1100, 429, 1102)]
  t.equal(wrongRefusals(history, one).length, 0, 'refusal explained by a late charge')
  history.push(req(1700, 429, 1702))
  t.equal(wrongRefusals(history, one).length, 1, 'a full second after the latest possible charge: wrong')
})
