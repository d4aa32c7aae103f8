/**
 * The command line: `ratelimit-gateway [command] [options]` (the package's bin, also
 * `node dist/src/main.js`). No command starts the gateway.
 */
import { parseArgs } from 'node:util'
import postgres from 'postgres'
import { ConfigError, loadConfigWithSources, sourceOf } from '../config/load.ts'
import { leaves, redactConfig } from '../config/redact.ts'
import { packageVersion } from '../core/package.ts'
import { migrate } from '../stores/postgres/migrate.ts'

export const USAGE = `Usage: ratelimit-gateway [command] [options]

A rate-limiting reverse proxy: per-caller token buckets in PostgreSQL, cached in Redis.

Commands:
  start                 run the gateway (the default when no command is given)
  check-config [FILE]   validate the configuration (FILE as CONFIG_FILE, else CONFIG_FILE);
                        exit 0 when valid, 2 naming every bad field
  print-config [FILE]   the effective configuration after files and environment, secrets
                        redacted, with where each value came from (default, file, env VAR)
  migrate               apply pending PostgreSQL migrations to DATABASE_URL and exit

Options:
  -h, --help            this text
  -v, --version         the version
      --json            print-config: one JSON document instead of lines

Configuration: config/default.yaml, then CONFIG_FILE, then environment variables (README,
"Configuration"). Stop a running gateway with SIGTERM or SIGINT; SIGHUP reloads it.
`

interface Io { out: (text: string) => void, err: (text: string) => void }
const STDIO: Io = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) }

/** Runs one command; resolves with the exit code (start resolves once the gateway runs). */
export async function runCli (argv: readonly string[], io: Io = STDIO, env: NodeJS.ProcessEnv = process.env): Promise<number | 'running'> {
  let parsed
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: { help: { type: 'boolean', short: 'h' }, version: { type: 'boolean', short: 'v' }, json: { type: 'boolean' } }
    })
  } catch (err) {
    io.err(`ratelimit-gateway: ${(err as Error).message}\n\n${USAGE}`)
    return 2
  }
  const { values, positionals } = parsed
  if (values.help === true) { io.out(USAGE); return 0 }
  if (values.version === true) { io.out(packageVersion() + '\n'); return 0 }
  const [command = 'start', ...rest] = positionals
  const maxArgs = command === 'check-config' || command === 'print-config' ? 1 : 0
  if (rest.length > maxArgs) {
    io.err(`ratelimit-gateway ${command}: unexpected argument ${JSON.stringify(rest[maxArgs])}\n\n${USAGE}`)
    return 2
  }
  const withFile = rest[0] === undefined ? env : { ...env, CONFIG_FILE: rest[0] }
  switch (command) {
    case 'start': {
      const { runGateway } = await import('../start.ts')
      await runGateway()
      return 'running'
    }
    case 'check-config':
      try {
        const { files } = loadConfigWithSources({ env: withFile })
        io.out(`configuration is valid (files: ${files.join(', ') || 'none'})\n`)
        return 0
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err
        io.err(`ratelimit-gateway: ${err.message}\n`)
        return 2
      }
    case 'print-config':
      try {
        const { config, files, sources } = loadConfigWithSources({ env: withFile })
        const rows = leaves(redactConfig(config)).filter(([, v]) => v !== undefined)
        if (values.json === true) {
          io.out(JSON.stringify({ files, config: redactConfig(config), sources: Object.fromEntries(rows.map(([p]) => [p, sourceOf(sources, p)])) }, null, 2) + '\n')
        } else {
          io.out(`# files read: ${files.join(', ') || 'none'}\n`)
          for (const [path, value] of rows) io.out(`${path} = ${JSON.stringify(value)}  # ${sourceOf(sources, path)}\n`)
        }
        return 0
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err
        io.err(`ratelimit-gateway: ${err.message}\n`)
        return 2
      }
    case 'migrate':
      return await runMigrate(io, env)
    default:
      io.err(`ratelimit-gateway: unknown command ${JSON.stringify(command)}\n\n${USAGE}`)
      return 2
  }
}

/** Applies pending migrations to the configured PostgreSQL: 0, 1 (database), 2 (configuration). */
export async function runMigrate (io: Io = STDIO, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  try {
    const { config } = loadConfigWithSources({ env })
    const sql = postgres(config.postgres.url, { max: 1, prepare: config.postgres.prepare, fetch_types: false, connect_timeout: config.postgres.connectTimeoutSeconds, onnotice: () => {} })
    try {
      const applied = await migrate(sql)
      io.out(applied.length > 0 ? `applied: ${applied.join(', ')}\n` : 'already up to date\n')
    } finally {
      await sql.end()
    }
    return 0
  } catch (err) {
    io.err(`migrate: ${(err as Error).message}\n`)
    return err instanceof ConfigError ? 2 : 1
  }
}
