declare module 'autocannon' {
  interface Histogram { p50: number, p99: number, average: number, mean: number }
  interface Result { requests: Histogram & { total: number }, latency: Histogram, duration: number, non2xx: number, errors: number, timeouts: number, '2xx': number }
  interface Options {
    url: string
    connections?: number
    duration?: number
    /** Stop after this many requests (instead of after `duration`). */
    amount?: number
    overallRate?: number
    method?: string
    headers?: Record<string, string>
    body?: string
    requests?: Array<{ method?: string, path?: string, headers?: Record<string, string>, body?: string, setupRequest?: (req: Record<string, unknown>) => Record<string, unknown> }>
  }
  function autocannon (options: Options): Promise<Result>
  export default autocannon
}
