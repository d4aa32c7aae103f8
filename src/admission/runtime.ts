/**
 * Everything a request needs from the configuration, built once per (re)load and swapped in
 * whole: the policy set and the identity source (a JWT key rotation is a reload too).
 */
import type { BlockList } from 'node:net'
import type { Config } from '../config/schema.ts'
import { PolicySet } from '../policy/policy-set.ts'
import { trustList } from '../identity/client-address.ts'
import { createIdentifier, type Identifier } from '../identity/identify.ts'

export interface Runtime {
  readonly config: Config
  readonly policies: PolicySet
  readonly identify: Identifier
  /** identity.trustedProxies, ready to check; null when none are configured. */
  readonly trustedProxies: BlockList | null
}

export function buildRuntime (config: Config, defaultUpstream: string, generation: number): Runtime {
  return {
    config,
    policies: new PolicySet(config, { defaultUpstream, generation }),
    identify: createIdentifier(config.identity),
    trustedProxies: config.identity.trustedProxies.length === 0 ? null : trustList(config.identity.trustedProxies)
  }
}
