// client_bench.mjs — one benchmark scenario, run with the official Durable Streams TypeScript
// client (`@durable-streams/client`, pinned in package.json), against any Durable Streams server.
//
// Usage
//   node client_bench.mjs --url BASE --scenario NAME [--count N] [--seconds S] [--rate R]
//                         [--timeout T] [--token TOKEN] [--stream-prefix P] [--yield-every K]
//
//   BASE is the server's base URL (e.g. http://127.0.0.1:8787); streams are created at
//   BASE/v1/stream/bench-node/<scenario>-<random>, a fresh one per run. --token adds
//   `Authorization: Bearer TOKEN` to every request (Runstream with auth on); --stream-prefix
//   replaces `/v1/stream/bench-node/`.
//
//   It prints exactly ONE JSON line to stdout and exits 0, or prints one JSON line
//   {"ok": false, "scenario", "error", ...} and exits 1 (failure), 2 (bad arguments) or
//   3 (the overall timeout). The client's own console output goes to stderr.
//   The overall timeout T (default max(60, S + 30) seconds) is hard: when it fires the process
//   prints the error line and exits whatever is still pending. Before the scenario one plain HEAD
//   probes the server, so an unreachable server fails at once (the client itself retries
//   connection errors with backoff without end). `ok` is false when a read-back does not verify,
//   a message is missing or the reader failed; the figures are still printed then, exit code 1.
//   --count defaults: sequential 1000, producer 10000, ping 1000; the latency scenarios use
//   --seconds and --rate instead.
//
// Messages
//   JSON objects of exactly 100 bytes serialized, {"seq":i,"t":<ms>,"pad":"xxx…"}, written to
//   application/json streams. `t` is performance.now() in this process at send time, so writer
//   and reader share one clock.
//
// Scenarios and their JSON fields (all lines also carry ok, scenario, url, stream_url, client,
// node, message_bytes, elapsed_s, and `requests`: HTTP requests made through the client, by method)
//   sequential  N appends through DurableStream.append(), each awaited before the next (the
//               client's plain append API; its automatic batching never engages when every call
//               is awaited). Each append is one POST with body `[msg]`.
//               -> count, appends_per_s, latency_ms {p50, p99, mean, max}, received, verified
//               (read back with a catch-up read: count and order).
//   producer    N messages through IdempotentProducer with its default options (lingerMs 5,
//               maxBatchBytes 1 MiB, maxInFlight 5), appended in a tight loop, then flush();
//               the clock stops when flush() resolves; then detach() (the stream stays open).
//               --yield-every K yields to the event loop every K appends (default 0: never, so
//               batches are cut by size only). Then the stream is read back (catch-up).
//               -> count, messages_per_s, flush_s, posts (batches sent), mean_batch_messages,
//               producer_errors (first 5), producer_error_count, received, verified (count and
//               order, and no onError call).
//   ping        a stream holding one message; after 20 warm-up requests, N sequential requests
//               for each of: HEAD with the global fetch (undici, keep-alive pooled), GET
//               ?offset=-1 with the global fetch, and the client's DurableStream.head().
//               -> count, fetch_head / fetch_get / client_head: {p50_ms, p99_ms, mean_ms,
//               req_per_s}.
//   sse_latency, longpoll_latency
//               one reader follows a fresh stream with stream({live: "sse"}) resp.
//               stream({live: "long-poll"}) and subscribeJson(); a warm-up message is written
//               and awaited first, so the reader is live at the tail. Then a writer POSTs one
//               message at a time with the global fetch at R messages/s (default 100) for
//               S seconds (default 3), on a fixed schedule (a POST that overruns its slot delays
//               the next ones, it never overlaps). Delivery latency = reader's callback time
//               minus the message's `t` (so it includes the POST itself). The reader gets up to
//               5 s after the last POST to catch up, then is cancelled.
//               -> live_mode, seconds, rate, write_seconds, sent, received (unique),
//               duplicates, missing, out_of_order,
//               latency_ms {p50, p99, max, mean}, post_ms {p50, p99} (the writer's POST round
//               trips), reader_requests (GETs the reader made: SSE connections or polls),
//               sse_fallback (the client gave up SSE for long-poll), reader_error.
//   `requests` counts only what went through the client (its `fetch` option): the plain-fetch
//   requests of ping and of the latency writer are not in it.
//
// Client notes (0.2.6)
//   DurableStream.append() and IdempotentProducer.append() take strings or bytes only, also on
//   JSON streams (its README shows objects; the producer throws for them), so messages are
//   JSON.stringify'd here; the client wraps each append in `[...]` itself.
//
// Percentiles are nearest-rank on the sorted samples, index round(q * (n - 1)), as in the
// Python benchmarks in bench/.

import fs from "node:fs"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client"

// ---------------------------------------------------------------- output discipline
// stdout carries the one JSON line; the client logs retries with console.log and SSE fallback
// with console.warn, so send all console output to stderr and watch for the fallback warning.
let sseFallbackWarnings = 0
for (const name of ["log", "info", "debug", "warn"]) {
  const original = console.error.bind(console)
  console[name] = (...args) => {
    if (args.some((a) => typeof a === "string" && a.includes("Falling back to long polling"))) {
      sseFallbackWarnings += 1
    }
    original(...args)
  }
}

const CLIENT_VERSION = (() => {
  try {
    const pkg = new URL("./node_modules/@durable-streams/client/package.json", import.meta.url)
    return `@durable-streams/client@${JSON.parse(fs.readFileSync(pkg, "utf8")).version}`
  } catch {
    return "@durable-streams/client@unknown"
  }
})()

const SCENARIOS = ["sequential", "producer", "ping", "sse_latency", "longpoll_latency"]
const MESSAGE_BYTES = 100

let emitted = false
const base = { scenario: null, url: null, stream_url: null }
const started = performance.now()

function emit(obj, code) {
  if (emitted) return
  emitted = true
  process.stdout.write(JSON.stringify(obj) + "\n", () => process.exit(code))
  // If stdout never drains, leave anyway.
  setTimeout(() => process.exit(code), 1000).unref()
}

function fail(error, code = 1, extra = {}) {
  emit({ ok: false, ...base, error: String(error), ...extra, elapsed_s: secondsSince(started) }, code)
}

function secondsSince(t0) {
  return round((performance.now() - t0) / 1000, 3)
}

function round(x, digits = 3) {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

// ---------------------------------------------------------------- arguments
let args
try {
  args = parseArgs({
    options: {
      url: { type: "string" },
      scenario: { type: "string" },
      count: { type: "string" },
      seconds: { type: "string", default: "3" },
      rate: { type: "string", default: "100" },
      timeout: { type: "string" },
      token: { type: "string" },
      "stream-prefix": { type: "string", default: "/v1/stream/bench-node/" },
      "yield-every": { type: "string", default: "0" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }).values
} catch (err) {
  fail(err.message, 2)
}
if (args?.help) {
  process.stdout.write(
    "usage: node client_bench.mjs --url BASE --scenario " +
      SCENARIOS.join("|") +
      " [--count N] [--seconds S] [--rate R] [--timeout T] [--token TOKEN]" +
      " [--stream-prefix P] [--yield-every K]\n",
  )
  process.exit(0)
}

function positive(name, value, { integer = true } = {}) {
  const x = Number(value)
  if (!(x > 0) || (integer && !Number.isInteger(x))) throw new Error(`bad --${name} ${value}`)
  return x
}

const DEFAULT_COUNT = { sequential: 1000, producer: 10000, ping: 1000 }
let cfg
try {
  if (!args) throw new Error("bad arguments")
  if (!args.url) throw new Error("--url is required")
  if (!SCENARIOS.includes(args.scenario)) {
    throw new Error(`--scenario must be one of ${SCENARIOS.join(", ")}`)
  }
  const baseUrl = args.url.replace(/\/+$/, "")
  new URL(baseUrl)
  const seconds = positive("seconds", args.seconds, { integer: false })
  cfg = {
    baseUrl,
    scenario: args.scenario,
    count: positive("count", args.count ?? DEFAULT_COUNT[args.scenario] ?? 1),
    seconds,
    rate: positive("rate", args.rate, { integer: false }),
    timeout: positive("timeout", args.timeout ?? Math.max(60, seconds + 30), { integer: false }),
    yieldEvery: Number(args["yield-every"]) || 0,
    prefix: "/" + args["stream-prefix"].replace(/^\/+/, "").replace(/\/*$/, "/"),
    headers: args.token ? { Authorization: `Bearer ${args.token}` } : {},
  }
  base.scenario = cfg.scenario
  base.url = cfg.baseUrl
} catch (err) {
  if (!emitted) fail(err.message, 2)
}

// ---------------------------------------------------------------- helpers
const requests = {}
// The fetch handed to the client (its documented `fetch` option): the global fetch, counted.
const countingFetch = (input, init) => {
  const method = (init?.method ?? (input instanceof Request ? input.method : "GET")).toUpperCase()
  requests[method] = (requests[method] ?? 0) + 1
  return globalThis.fetch(input, init)
}

function message(seq) {
  const t = round(performance.now(), 3)
  const head = JSON.stringify({ seq, t, pad: "" })
  const pad = "x".repeat(Math.max(0, MESSAGE_BYTES - Buffer.byteLength(head)))
  return JSON.stringify({ seq, t, pad })
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))]
}

function summary(samples) {
  const s = [...samples].sort((a, b) => a - b)
  const mean = s.length ? s.reduce((a, b) => a + b, 0) / s.length : null
  return {
    p50: s.length ? round(percentile(s, 0.5)) : null,
    p99: s.length ? round(percentile(s, 0.99)) : null,
    mean: mean === null ? null : round(mean),
    max: s.length ? round(s[s.length - 1]) : null,
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

async function freshStream() {
  const name = `${cfg.scenario}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`
  const url = `${cfg.baseUrl}${cfg.prefix}${name}`
  base.stream_url = url
  const handle = await DurableStream.create({
    url,
    contentType: "application/json",
    headers: cfg.headers,
    fetch: countingFetch,
  })
  return handle
}

// Catch-up read of the whole stream with the client; checks that seq runs 0..n-1 in order.
async function readBack(url, expected) {
  const res = await stream({
    url,
    offset: "-1",
    live: false,
    json: true,
    headers: cfg.headers,
    fetch: countingFetch,
  })
  const items = await res.json()
  let inOrder = items.length === expected
  for (let i = 0; inOrder && i < items.length; i++) {
    if (items[i]?.seq !== i) inOrder = false
  }
  return { received: items.length, verified: inOrder }
}

// ---------------------------------------------------------------- scenarios
async function sequential() {
  const handle = await freshStream()
  const n = cfg.count
  const latencies = new Array(n)
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const body = message(i)
    const a = performance.now()
    await handle.append(body)
    latencies[i] = performance.now() - a
  }
  const elapsed = (performance.now() - t0) / 1000
  const back = await readBack(handle.url, n)
  return {
    count: n,
    appends_per_s: round(n / elapsed, 1),
    latency_ms: summary(latencies),
    received: back.received,
    verified: back.verified,
  }
}

async function producer() {
  const handle = await freshStream()
  const n = cfg.count
  const errors = []
  const posts0 = requests.POST ?? 0
  const p = new IdempotentProducer(handle, `bench-node-${process.pid}`, {
    fetch: countingFetch,
    headers: cfg.headers,
    onError: (err) => errors.push(String(err?.message ?? err)),
  })
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    p.append(message(i))
    if (cfg.yieldEvery > 0 && (i + 1) % cfg.yieldEvery === 0) {
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  await p.flush()
  const elapsed = (performance.now() - t0) / 1000
  const posts = (requests.POST ?? 0) - posts0
  await p.detach()
  const back = await readBack(handle.url, n)
  return {
    count: n,
    messages_per_s: round(n / elapsed, 1),
    flush_s: round(elapsed, 3),
    posts,
    mean_batch_messages: posts ? round(n / posts, 1) : null,
    producer_errors: errors.slice(0, 5),
    producer_error_count: errors.length,
    received: back.received,
    verified: back.verified && errors.length === 0,
  }
}

async function timeRequests(n, once) {
  for (let i = 0; i < 20; i++) await once()
  const samples = new Array(n)
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const a = performance.now()
    await once()
    samples[i] = performance.now() - a
  }
  const elapsed = (performance.now() - t0) / 1000
  const s = summary(samples)
  return { p50_ms: s.p50, p99_ms: s.p99, mean_ms: s.mean, req_per_s: round(n / elapsed, 1) }
}

async function ping() {
  const handle = await freshStream()
  await handle.append(message(0))
  const url = handle.url
  const headers = cfg.headers
  const fetchHead = async () => {
    const r = await fetch(url, { method: "HEAD", headers })
    if (!r.ok) throw new Error(`HEAD ${r.status}`)
    await r.arrayBuffer()
  }
  const fetchGet = async () => {
    const r = await fetch(`${url}?offset=-1`, { headers })
    if (!r.ok) throw new Error(`GET ${r.status}`)
    await r.arrayBuffer()
  }
  const clientHead = async () => {
    const h = await handle.head()
    if (!h.exists) throw new Error("client head: stream not found")
  }
  return {
    count: cfg.count,
    fetch_head: await timeRequests(cfg.count, fetchHead),
    fetch_get: await timeRequests(cfg.count, fetchGet),
    client_head: await timeRequests(cfg.count, clientHead),
  }
}

async function liveLatency(live) {
  const handle = await freshStream()
  const url = handle.url
  const seen = new Map() // seq -> latency ms (first delivery)
  let duplicates = 0
  let outOfOrder = 0
  let lastSeq = -1
  let warmedUp = null
  const warm = new Promise((resolve) => (warmedUp = resolve))
  let readerError = null
  const gets0 = requests.GET ?? 0

  const res = await stream({
    url,
    offset: "-1",
    live,
    json: true,
    headers: cfg.headers,
    fetch: countingFetch,
    onError: (err) => {
      readerError = String(err?.message ?? err)
      return undefined // stop: a benchmark reader should not paper over errors
    },
  })
  res.subscribeJson((batch) => {
    const now = performance.now()
    for (const item of batch.items) {
      if (item?.warmup) {
        warmedUp()
        continue
      }
      const seq = item?.seq
      if (typeof seq !== "number") continue
      if (seen.has(seq)) {
        duplicates += 1
        continue
      }
      if (seq < lastSeq) outOfOrder += 1
      lastSeq = Math.max(lastSeq, seq)
      seen.set(seq, now - item.t)
    }
  })

  const post = async (body) => {
    const r = await fetch(url, {
      method: "POST",
      headers: { ...cfg.headers, "content-type": "application/json" },
      body,
    })
    if (!r.ok) throw new Error(`POST ${r.status}: ${(await r.text()).slice(0, 200)}`)
    await r.arrayBuffer()
  }

  // Warm-up: the reader must be live at the tail before the timed writes.
  await post(JSON.stringify({ warmup: true, pad: "x".repeat(80) }))
  const warmTimeout = sleep(10000).then(() => "timeout")
  if ((await Promise.race([warm.then(() => "ok"), warmTimeout])) !== "ok") {
    throw new Error(`reader never received the warm-up message${readerError ? `: ${readerError}` : ""}`)
  }

  const interval = 1000 / cfg.rate
  const total = Math.max(1, Math.round(cfg.seconds * cfg.rate))
  const postMs = []
  const w0 = performance.now()
  for (let i = 0; i < total; i++) {
    await sleep(w0 + i * interval - performance.now())
    const a = performance.now()
    await post(message(i))
    postMs.push(performance.now() - a)
  }
  const writeSeconds = (performance.now() - w0) / 1000

  const deadline = performance.now() + 5000
  while (seen.size < total && performance.now() < deadline && !readerError) await sleep(5)
  res.cancel("benchmark done")

  const lat = summary([...seen.values()])
  const post_ = summary(postMs)
  return {
    live_mode: live,
    seconds: cfg.seconds,
    rate: cfg.rate,
    write_seconds: round(writeSeconds, 3),
    sent: total,
    received: seen.size,
    duplicates,
    missing: total - [...seen.keys()].filter((k) => k >= 0 && k < total).length,
    out_of_order: outOfOrder,
    latency_ms: { p50: lat.p50, p99: lat.p99, max: lat.max, mean: lat.mean },
    post_ms: { p50: post_.p50, p99: post_.p99 },
    reader_requests: (requests.GET ?? 0) - gets0,
    sse_fallback: sseFallbackWarnings > 0,
    reader_error: readerError,
  }
}

// ---------------------------------------------------------------- main
async function main() {
  const timer = setTimeout(
    () => fail(`timeout: scenario did not finish within ${cfg.timeout} s`, 3, { requests }),
    cfg.timeout * 1000,
  )
  const run = {
    sequential,
    producer,
    ping,
    sse_latency: () => liveLatency("sse"),
    longpoll_latency: () => liveLatency("long-poll"),
  }[cfg.scenario]
  // Fail fast when nothing listens: the client retries connection errors with backoff forever.
  try {
    const probe = await fetch(`${cfg.baseUrl}${cfg.prefix}__probe__`, {
      method: "HEAD",
      headers: cfg.headers,
      signal: AbortSignal.timeout(10000),
    })
    await probe.arrayBuffer()
  } catch (err) {
    throw new Error(`server unreachable at ${cfg.baseUrl}: ${err?.cause?.code ?? err?.cause?.message ?? err?.message ?? err}`)
  }
  const figures = await run()
  clearTimeout(timer)
  const ok =
    figures.verified !== false &&
    !figures.reader_error &&
    (figures.missing === undefined || figures.missing === 0)
  emit(
    {
      ok,
      ...base,
      client: CLIENT_VERSION,
      node: process.version,
      message_bytes: MESSAGE_BYTES,
      ...figures,
      requests,
      elapsed_s: secondsSince(started),
    },
    ok ? 0 : 1,
  )
}

if (!emitted) {
  process.on("unhandledRejection", (err) => fail(err?.stack ?? err, 1, { requests }))
  main().catch((err) => fail(err?.message ?? err, 1, { requests, stack: String(err?.stack ?? "") }))
}
