/**
 * The admin API on the control port: peek at and reset buckets, set and remove per-caller
 * overrides of a policy's capacity and rate, list the live policies. Every route needs
 * `Authorization: Bearer <ADMIN_TOKEN>`; without a configured token the routes answer 404.
 * Every write is logged with who did what (X-Admin-Actor names the person or tool).
 */
import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { tokensAt } from '../core/token-bucket.ts'
import { makeDecision } from '../core/decision.ts'
import { BadRequest } from '../core/errors.ts'
import { policyNamed } from '../admission/admit.ts'
import { parseKey } from '../identity/caller-id.ts'
import { PROBLEM_TYPE, problem } from '../core/problems.ts'
import type { LimitPolicy } from '../policy/policy-set.ts'
import { effectivePolicy, type Override } from '../policy/overrides.ts'
import { decisionBody } from './decision-body.ts'
import type { ControlDeps } from './deps.ts'

type KeyRoute = { Params: { key: string }, Querystring: { policy?: string } }
interface OverrideBody { capacity?: number, refill_per_second?: number }

const keyParams = { type: 'object', required: ['key'], properties: { key: { type: 'string', description: 'The caller id (URL-encoded).', example: 'svc-42' } } }
const policyQuery = { type: 'object', additionalProperties: false, properties: { policy: { type: 'string', description: 'Policy name (default: "default").', example: 'default' } } }
const problems = { 400: { $ref: 'problem#' }, 401: { $ref: 'problem#' }, 404: { $ref: 'problem#' }, 503: { $ref: 'problem#' } }
const actorHeader = { type: 'object', properties: { 'x-admin-actor': { type: 'string', maxLength: 100, description: 'Who is making the change, for the log (default "admin").', example: 'alice' } } }

const overrideSchema = {
  type: 'object',
  required: ['policy', 'key', 'capacity', 'refill_per_second', 'updated_by', 'updated_at'],
  properties: {
    policy: { type: 'string' },
    key: { type: 'string' },
    capacity: { type: 'number', nullable: true, description: 'null: the policy\'s own capacity.' },
    refill_per_second: { type: 'number', nullable: true, description: 'null: the policy\'s own rate.' },
    updated_by: { type: 'string' },
    updated_at: { type: 'string', format: 'date-time' }
  }
}

function overrideBody (o: Override): Record<string, unknown> {
  return { policy: o.policy, key: o.userId, capacity: o.capacity, refill_per_second: o.refillPerSecond, updated_by: o.updatedBy, updated_at: o.updatedAt }
}

export function registerAdmin (app: FastifyInstance, deps: ControlDeps): void {
  const token = deps.config.control.adminToken
  const expected = token === undefined ? null : Buffer.from(`Bearer ${token}`)
  const { cache, overrides } = deps

  function authorize (request: FastifyRequest, reply: FastifyReply): boolean {
    if (expected === null) {
      reply.code(404).type(PROBLEM_TYPE).send(problem('ADMIN_DISABLED'))
      return false
    }
    const given = Buffer.from(request.headers.authorization ?? '')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      request.log.warn({ admin_action: 'refused', method: request.method, url: request.url, remote_address: request.ip }, 'admin request refused: missing or wrong token')
      reply.code(401).header('www-authenticate', 'Bearer').type(PROBLEM_TYPE).send(problem('ADMIN_TOKEN_REQUIRED'))
      return false
    }
    return true
  }

  function who (request: FastifyRequest): { actor: string, remote_address: string } {
    const raw = request.headers['x-admin-actor']
    const actor = typeof raw === 'string' && raw.trim() !== '' ? raw.trim().slice(0, 100) : 'admin'
    return { actor, remote_address: request.ip }
  }

  function target (params: { key: string }, query: { policy?: string }): { configured: LimitPolicy, policy: LimitPolicy, key: string } {
    const key = parseKey(params.key)
    if (!key.ok) throw new BadRequest(key.detail)
    const configured = policyNamed(deps.runtime.current, query.policy)
    return { configured, policy: overrides.table.apply(configured, key.id), key: key.id }
  }

  /** Snapshots are keyed by the numbers they were computed under: drop each variant in play. */
  async function dropSnapshots (key: string, ...policies: LimitPolicy[]): Promise<void> {
    const names = new Set(policies.map((p) => p.cacheName))
    for (const name of names) deps.limiter.forget(name, key)
    // Every worker keeps its own over-limit cache: each must forget before the answer says done.
    await Promise.all([...[...names].map((name) => cache.remove(cache.key(name, key)).catch(() => {})), deps.cluster?.forget([...names], key)])
  }

  const common = { tags: ['admin'], security: [{ admin: [] }] }

  app.get<KeyRoute>('/v1/buckets/:key', {
    schema: { ...common, params: keyParams, querystring: policyQuery, summary: 'Peek at a bucket without spending a token (override applied).' }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { policy, key } = target(request.params, request.query)
    const { snapshot, nowMs } = await deps.store.peek(policy.name, key)
    const tokens = snapshot === null ? policy.capacity : tokensAt(snapshot, policy, nowMs)
    const override = overrides.table.get(policy.name, key)
    // Every bucket the caller has under the live policies (a plan's burst, hourly and monthly
    // limits are separate buckets), each with its override applied.
    const all = [...deps.runtime.current.policies.policies.values()].filter((p) => p.concurrency === undefined).map((p) => overrides.table.apply(p, key))
    const buckets = await Promise.all(all.map(async (p) => {
      const peeked = p.name === policy.name ? { snapshot, nowMs } : await deps.store.peek(p.name, key)
      const left = peeked.snapshot === null ? p.capacity : tokensAt(peeked.snapshot, p, peeked.nowMs)
      return { exists: peeked.snapshot !== null, tokens: left, ...decisionBody(makeDecision(p, 0, true, left, 'postgres', 'postgres')) }
    }))
    return {
      key,
      exists: snapshot !== null,
      tokens,
      ...decisionBody(makeDecision(policy, 0, true, tokens, 'postgres', 'postgres')),
      override: override === undefined ? null : overrideBody(override),
      buckets
    }
  })

  app.delete<KeyRoute>('/v1/buckets/:key', {
    schema: { ...common, params: keyParams, querystring: policyQuery, headers: actorHeader, summary: 'Reset a bucket to full; takes effect on the very next request.' }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { configured, policy, key } = target(request.params, request.query)
    // The cached snapshot goes first and again after: a stale one would keep denying.
    await dropSnapshots(key, configured, policy)
    const existed = await deps.store.reset(policy.name, key)
    await dropSnapshots(key, configured, policy)
    request.log.info({ admin_action: 'reset', ...who(request), key, policy: policy.name, existed }, 'bucket reset')
    return { key, policy: policy.name, reset: true, existed }
  })

  app.get('/v1/policies', {
    schema: {
      ...common,
      summary: 'The live policy configuration: policies, routes, tiers, allow and deny lists, upstreams.',
      response: {
        200: {
          type: 'object',
          additionalProperties: true,
          properties: {
            generation: { type: 'integer', description: 'Increases with every applied reload.' },
            loaded_at: { type: 'string', format: 'date-time' },
            policies: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  name: { type: 'string' },
                  capacity: { type: 'number' },
                  refill_per_second: { type: 'number' },
                  cost: { type: 'number' },
                  shadow: { type: 'boolean' },
                  consistency: { type: 'string', enum: ['strict', 'write-behind'], description: 'Who decides the bucket: PostgreSQL (strict) or Redis, written behind. Absent for a concurrency policy.' },
                  max_route_cost: { type: 'number', description: 'Largest cost any route charges; an override capacity may not be lower.' }
                }
              }
            },
            routes: { type: 'array', items: { type: 'object', additionalProperties: true } },
            tiers: { type: 'object', additionalProperties: true },
            access: { type: 'object', additionalProperties: true },
            upstreams: { type: 'array', items: { type: 'object', additionalProperties: true } },
            overrides: { type: 'integer', description: 'Number of per-caller overrides in force.' }
          }
        },
        ...problems
      }
    }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    return { ...deps.runtime.current.policies.describe(), overrides: overrides.table.size }
  })

  app.get('/v1/overrides', {
    schema: { ...common, summary: 'Every per-caller override in force.', response: { 200: { type: 'object', properties: { overrides: { type: 'array', items: overrideSchema } } }, ...problems } }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    return { overrides: overrides.table.list().map(overrideBody) }
  })

  app.put<KeyRoute & { Body: OverrideBody }>('/v1/overrides/:key', {
    schema: {
      ...common,
      summary: 'Set a caller\'s override of a policy\'s capacity and/or refill rate; takes effect on the next request.',
      params: keyParams,
      querystring: policyQuery,
      headers: actorHeader,
      body: {
        type: 'object',
        additionalProperties: false,
        minProperties: 1,
        properties: {
          capacity: { type: 'number', exclusiveMinimum: 0, maximum: 1e9, description: 'Bucket size for this caller; at least the largest cost routed to the policy.' },
          refill_per_second: { type: 'number', exclusiveMinimum: 0, maximum: 1e9, description: 'Refill rate for this caller.' }
        },
        example: { capacity: 100, refill_per_second: 10 }
      },
      response: { 200: overrideSchema, ...problems }
    }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { configured, policy: before, key } = target(request.params, request.query)
    const capacity = request.body.capacity ?? null
    const rate = request.body.refill_per_second ?? null
    const after = effectivePolicy(configured, capacity, rate)
    const largestCost = deps.runtime.current.policies.maxCost.get(configured.name) ?? configured.cost
    if (after.capacity < largestCost) {
      throw new BadRequest(`capacity ${after.capacity} is below the cost ${largestCost} that requests under policy "${configured.name}" are charged; they could never pass.`)
    }
    const by = who(request)
    const saved = await overrides.set(configured.name, key, capacity, rate, by.actor)
    // A raise must not be hidden by a snapshot cached under other numbers (docs/design.md).
    await dropSnapshots(key, before, after)
    request.log.info({ admin_action: 'override.set', ...by, key, policy: configured.name, capacity, refill_per_second: rate, previous: { capacity: before.capacity, refill_per_second: before.refillPerSecond } }, 'rate-limit override set')
    return overrideBody(saved)
  })

  app.delete<KeyRoute>('/v1/overrides/:key', {
    schema: {
      ...common,
      summary: 'Remove a caller\'s override; the policy\'s own numbers apply from the next request.',
      params: keyParams,
      querystring: policyQuery,
      headers: actorHeader,
      response: { 200: { type: 'object', properties: { removed: { type: 'boolean' }, override: { ...overrideSchema, nullable: true } } }, ...problems }
    }
  }, async (request, reply) => {
    if (!authorize(request, reply)) return reply
    const { configured, policy: before, key } = target(request.params, request.query)
    const removed = await overrides.remove(configured.name, key)
    await dropSnapshots(key, before, configured)
    const by = who(request)
    request.log.info({ admin_action: 'override.remove', ...by, key, policy: configured.name, removed: removed !== null }, 'rate-limit override removed')
    return { removed: removed !== null, override: removed === null ? null : overrideBody(removed) }
  })
}
