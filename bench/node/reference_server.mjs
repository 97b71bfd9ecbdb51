// reference_server.mjs — the Durable Streams Node reference server, for the benchmark harness.
//
// What it is
//   `@durable-streams/server` (pinned in package.json) has no CLI; it exports a class,
//   `DurableStreamTestServer({ host, port, ... })`, with `start()` (resolves to its base URL once
//   listening) and `stop()`. This script starts one, in memory (no `dataDir`), and keeps it running
//   until told to stop.
//
// Usage
//   node reference_server.mjs [--host 127.0.0.1] [--port 4437] [--long-poll-timeout-ms 30000]
//                             [--no-compression] [--file-backed DIR]
//   --port 0 picks a free port; the line printed says which.
//
//   When ready it prints exactly one line to stdout:   listening http://127.0.0.1:PORT
//   Everything else (the server's own logs) goes to stderr, so a parent can read stdout line by line.
//
// Paths
//   The reference server keys streams by the whole request path: any path is a stream, and the
//   server reserves only `/v1/stream/__ds*` (its subscription routes), `/v1/stream/__registry__`
//   and `/_test/inject-error`. So it serves the protocol at the same paths as Runstream: with the
//   printed base URL B, a stream is `B/v1/stream/<path>` — the base to give client_bench.mjs is B.
//
// Compression
//   By default the reference server gzips/deflates read responses of 1 KiB or more when the client
//   sends Accept-Encoding (Node's fetch does). `--no-compression` turns that off (its
//   `compression: false` option), e.g. to compare with a server that never compresses.
//
// Stopping
//   SIGTERM or SIGINT, or the end of stdin when stdin is a pipe or socket (so a parent that dies,
//   closing its end of the pipe, never leaves it running). When stdin is a terminal or /dev/null
//   (as for a shell's `node reference_server.mjs &`) it is not watched, since /dev/null ends at once.
//   Stopping calls `server.stop()` (ends SSE responses, cancels long-polls, closes the listener) and
//   exits 0; if that has not finished within 1 s (it waits for an open long-poll, for one) the
//   process exits anyway, code 0 too: the store is in memory, there is nothing to save.

import fs from "node:fs"
import { parseArgs } from "node:util"
import { DurableStreamTestServer } from "@durable-streams/server"

// Keep stdout for the one `listening` line: the server logs through console.info/log.
for (const name of ["log", "info", "debug"]) {
  console[name] = (...args) => console.error(...args)
}

function fail(message) {
  process.stderr.write(`reference_server: ${message}\n`)
  process.exit(2)
}

let args
try {
  args = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "4437" },
      "long-poll-timeout-ms": { type: "string" },
      "no-compression": { type: "boolean", default: false },
      "file-backed": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }).values
} catch (err) {
  fail(err.message)
}
if (args.help) {
  process.stdout.write(
    "usage: node reference_server.mjs [--host H] [--port P] [--long-poll-timeout-ms MS] " +
      "[--no-compression] [--file-backed DIR]\n",
  )
  process.exit(0)
}

const port = Number(args.port)
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${args.port}`)
const options = { host: args.host, port, compression: !args["no-compression"] }
if (args["long-poll-timeout-ms"] !== undefined) {
  const ms = Number(args["long-poll-timeout-ms"])
  if (!(ms > 0)) fail(`bad --long-poll-timeout-ms ${args["long-poll-timeout-ms"]}`)
  options.longPollTimeout = ms
}
if (args["file-backed"]) options.dataDir = args["file-backed"]

const server = new DurableStreamTestServer(options)

let stopping = false
async function shutdown(reason) {
  if (stopping) return
  stopping = true
  process.stderr.write(`reference_server: stopping (${reason})\n`)
  const force = setTimeout(() => process.exit(0), 1000)
  force.unref()
  try {
    await server.stop()
  } catch (err) {
    process.stderr.write(`reference_server: stop failed: ${err?.stack ?? err}\n`)
  }
  process.exit(0)
}

process.on("SIGTERM", () => shutdown("SIGTERM"))
process.on("SIGINT", () => shutdown("SIGINT"))
process.on("SIGHUP", () => shutdown("SIGHUP"))

function stdinIsPipe() {
  try {
    const st = fs.fstatSync(0)
    return st.isFIFO() || st.isSocket()
  } catch {
    return false
  }
}
if (stdinIsPipe()) {
  process.stdin.on("data", () => {})
  process.stdin.on("end", () => shutdown("stdin closed"))
  process.stdin.on("close", () => shutdown("stdin closed"))
  process.stdin.on("error", () => shutdown("stdin error"))
  process.stdin.resume()
}

try {
  const url = await server.start()
  if (stopping) process.exit(0)
  process.stdout.write(`listening ${url}\n`)
} catch (err) {
  fail(`cannot start: ${err?.message ?? err}`)
}
