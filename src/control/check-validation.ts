/**
 * Validation of POST /v1/check bodies by the shape the client sent: a body with `checks` is a
 * batch and is checked against the batch schema only, anything else against the single check,
 * so an error never mixes the two shapes ("must match exactly one schema in oneOf"). Errors
 * name the field the way a client wrote it: `checks[3].cost must be >= 1`.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'

export type BodyValidator = (data: unknown) => true | { error: Error }

/** `/checks/3/cost` → `checks[3].cost`. */
function fieldOf (instancePath: string): string {
  let out = ''
  for (const part of instancePath.split('/').slice(1)) out += /^\d+$/.test(part) ? `[${part}]` : (out === '' ? '' : '.') + part
  return out
}

function describe (e: ErrorObject): string {
  const at = fieldOf(e.instancePath)
  const params = e.params as Record<string, unknown>
  if (e.keyword === 'additionalProperties') return `${at === '' ? 'the body' : at} has an unknown property "${String(params.additionalProperty)}"`
  if (e.keyword === 'required') return `${at === '' ? 'the body' : at} must have the property "${String(params.missingProperty)}"`
  return `${at === '' ? 'the body' : at} ${e.message ?? 'is not valid'}`
}

export function checkBodyValidator (single: object, batch: object): BodyValidator {
  const ajv = new Ajv({ allErrors: false, coerceTypes: false, strict: false })
  const one: ValidateFunction = ajv.compile(single)
  const many: ValidateFunction = ajv.compile(batch)
  return (data) => {
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      return { error: new Error('The body must be a JSON object: {"key": …} for one check or {"checks": […]} for several.') }
    }
    const validate = 'checks' in data ? many : one
    if (validate(data)) return true
    const shape = validate === many ? 'a batch {"checks": […]}' : 'a single check {"key": …}'
    return { error: new Error(`Invalid ${shape}: ${validate.errors!.map(describe).join('; ')}.`) }
  }
}
