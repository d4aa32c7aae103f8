/**
 * Array parameters, sent as PostgreSQL array literals under their array type's oid.
 *
 * postgres.js's own `sql.array` serialises with the array types it queries on every new
 * connection (`fetch_types`). That query's promise is dropped: a connection lost while it runs
 * rejects with nobody listening (upstream porsager/postgres#1192, #1205, #1223), which stopped a
 * gateway during a PostgreSQL fail-over; and a pool whose first connection opened during an
 * outage could send an `int[]` as an `int`. So the gateway's pools run with `fetch_types: false`
 * and their array parameters are built here: no type lookup, no extra query per connection.
 */
import type { Parameter } from 'postgres'

/** What is needed of a pool or a transaction. */
interface Typed { typed: <T>(value: T, oid: number) => Parameter<T> }

/** The array types' oids (pg_type.typarray of int4, text and float8). */
const INT4_ARRAY = 1007
const TEXT_ARRAY = 1009
const FLOAT8_ARRAY = 1022

/** `{"a","b"}`: every element quoted, its backslashes and double quotes escaped (array input syntax). */
export function textLiteral (xs: readonly string[]): string {
  let out = '{'
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i]!
    out += (i === 0 ? '"' : ',"') + (x.includes('"') || x.includes('\\') ? x.replace(/["\\]/g, '\\$&') : x) + '"'
  }
  return out + '}'
}

/** `{1,0.5}`: JavaScript's shortest representation, which float8's input reads back exactly. */
export function numberLiteral (xs: readonly number[]): string {
  return '{' + xs.join(',') + '}'
}

export function textArray (sql: Typed, xs: readonly string[]): Parameter<string> {
  return sql.typed(textLiteral(xs), TEXT_ARRAY)
}

export function float8Array (sql: Typed, xs: readonly number[]): Parameter<string> {
  return sql.typed(numberLiteral(xs), FLOAT8_ARRAY)
}

export function int4Array (sql: Typed, xs: readonly number[]): Parameter<string> {
  return sql.typed(numberLiteral(xs), INT4_ARRAY)
}
