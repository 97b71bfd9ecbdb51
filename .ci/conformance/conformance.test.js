// The Durable Streams server conformance suite, run against the server at RUNSTREAM_CONFORMANCE_URL.
// The package's own CLI cannot be used: vitest does not collect test files inside node_modules.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.RUNSTREAM_CONFORMANCE_URL
if (!baseUrl) {
  throw new Error("set RUNSTREAM_CONFORMANCE_URL to the base URL of a running Runstream server")
}

runConformanceTests({ baseUrl })
