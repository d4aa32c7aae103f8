/** What every decision leaves behind: two metric series and, at debug level, one log line. */
import type { Decision } from '../core/domain.ts'
import type { Logger } from '../observability/log.ts'
import type { Metrics } from '../observability/metrics.ts'

export function recordDecision (metrics: Metrics, decision: Decision, userId: string, started: bigint, log: Logger): void {
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const { source, decidedBy, policy } = decision
  metrics.decisionDuration.observe({ source, decided_by: decidedBy }, seconds)
  metrics.decisions.inc({ result: decision.allowed ? 'allowed' : 'blocked', source, policy: policy.name, decided_by: decidedBy })
  if (log.isLevelEnabled('debug')) {
    if (decision.allowed) {
      log.debug({ user_id: userId, remaining_tokens: Math.floor(decision.tokens), source, policy: policy.name }, 'rate limit allowed')
    } else {
      log.debug({ user_id: userId, source, policy: policy.name }, 'rate limit exceeded')
    }
  }
}
