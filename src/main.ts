#!/usr/bin/env node
/** Process entry point and the package's bin (`ratelimit-gateway`): src/cli/cli.ts. */
import { runCli } from './cli/cli.ts'

const code = await runCli(process.argv.slice(2))
if (code !== 'running') process.exitCode = code
