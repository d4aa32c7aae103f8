/** `npm run openapi`: writes the control API's OpenAPI document to docs/openapi.json. */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { packageRoot } from '../src/core/package.ts'
import { OPENAPI_FILE, openapiDocument, serialize } from './openapi-lib.ts'

writeFileSync(join(packageRoot(), OPENAPI_FILE), serialize(await openapiDocument()))
process.stdout.write(`wrote ${OPENAPI_FILE}\n`)
