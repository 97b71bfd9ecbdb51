"""Fan-out of the live path: one writer, R readers of one run stream, and Redis beside it.

    python bench/fanout.py                         # R = 1, 100, 1000; ws, SSE, Redis; 20 s each
    python bench/fanout.py --smoke                 # R = 1, 10; 2 s each: a CI check that runs
    python bench/fanout.py --readers 1,100 --transports ws,redis --seconds 10

What it measures, per scenario (a transport and a number of readers R):
- One writer sends 100 chunks/s (about 100 bytes of JSON each, carrying its send time) to one run
  stream over the websocket append endpoint, one ``chunks`` frame per chunk, paced by an absolute
  schedule (chunk n at start + n/100 s); its acks are read in the background.
- R readers follow the stream live, over websockets (``/realtime/v2/streams/...``) or over SSE
  (Durable Streams ``live=sse``), from client processes separate from the server, each an asyncio
  loop holding its share of the readers (bench/live.py, shared with bench/delivery.py). They
  are all connected and live before the writer starts, so each must get every chunk of the
  scenario exactly once and in order; duplicates, out-of-order arrivals and missing chunks are
  counted.
- Latency is the time from a chunk's send time (its own ``t``) to its arrival at a reader, over
  all readers and chunks: p50, p99 and max in ms.
- Server CPU (utime + stime of the gunicorn arbiter and worker, from /proc, as % of one core over
  the scenario), its RSS (VmRSS, summed), and server CPU per delivered chunk. The readers' own
  CPU is shown too: on a small machine they compete with the server for cores.
- The same for Redis as the near-limit line: XADD at 100/s, R readers on XREAD BLOCK (one
  connection each), CPU and RSS of redis-server. Skipped, saying so, if Redis is unreachable.

Each Runstream scenario gets a fresh ``runstream serve`` (a new SQLite file, auth disabled,
room for 2R+64 live readers). The server's output goes to a log: its
errors and warnings are summed up after each scenario, and its tail is printed if a scenario
goes wrong. The writer's own figure (chunk sent -> ack) is printed as a note: when the server
falls behind, the appends queue up first.

Figures only: nothing is asserted about time. The exit status is non-zero only if the benchmark
itself breaks (a reader process or the writer fails), or, with ``--smoke``, if any reader did not
get every chunk: losing a chunk is a bug, not a timing figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live import (
    CHUNK_BYTES,
    HOST,
    REDIS_PORT,
    ClientProcesses,
    ProcessResult,
    RedisWriter,
    jobs_for,
    live_room,
    make_chunk,
    merged,
    redis_pids,
    redis_reachable,
    write_paced,
)
from procstat import cpu_seconds, percentile, process_tree, raise_fd_limit, status_sum, stop_server

KEY = "fanout"
RATE = 100  # chunks per second
TRANSPORTS = ("ws", "sse", "redis")
SERVE = [sys.executable, "-m", "runstream.server"]
GUNICORN_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] ")  # its time and pid
PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^[\w.]+(Error|Exception)\b|handler failed")


# -- scenarios and their figures ---------------------------------------------------------------


@dataclass
class Outcome:
    transport: str
    readers: int
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    server_cpu_percent: float | None = None
    server_rss_mib: float | None = None
    cpu_us_per_chunk: float | None = None
    client_cpu_percent: float | None = None
    notes: list[str] = field(default_factory=list)
    broken: bool = False  # the benchmark itself failed (a client process or the writer)
    log_problems: int = 0  # lines of errors or warnings in the server's log
    client_bound: bool = False  # the readers' processes had no CPU to spare

    @property
    def complete(self) -> bool:
        return self.delivered == self.expected and self.duplicates == 0


# -- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    pid: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(f"    | {line}" for line in text[-lines:]) or "    | (empty)"

    def log_problems(self) -> list[str]:
        """The log's errors and warnings: gunicorn's, the app's, and each exception's last line."""
        return [
            GUNICORN_PREFIX.sub("", line.strip())
            for line in self.log.read_text(errors="replace").splitlines()
            if PROBLEM.search(line)
        ]


@contextlib.contextmanager
def runstream_server(live_readers: int, logs: Path) -> Iterator[Server]:
    """``runstream serve`` on a fresh SQLite file, auth disabled, killed on the way out."""
    import httpx

    with tempfile.TemporaryDirectory() as instance:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        log = logs / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*SERVE, "serve", "--port", str(port)],
                env={
                    **os.environ,
                    "RUNSTREAM_INSTANCE_PATH": instance,
                    "RUNSTREAM_AUTH": "disabled",
                    "RUNSTREAM_MAX_LIVE_READERS": str(live_readers),
                },
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(port, process.pid, log, process)
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited at start:\n{server.log_tail()}")
                try:
                    httpx.head(f"{server.url}/v1/stream/ready")
                    break
                except httpx.TransportError as error:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no server:\n{server.log_tail()}") from error
                    time.sleep(0.05)
            yield server
        finally:
            stop_server(process)


def trigger_run(url: str) -> str:
    import httpx

    with httpx.Client(base_url=url) as client:
        response = client.post("/api/v1/tasks/bench-fanout/trigger", json={"payload": {}})
        response.raise_for_status()
        return str(response.json()["id"])


# -- the writers -------------------------------------------------------------------------------


class RunstreamWriter:
    """One websocket writer of the run stream: hello, a priming chunk, then the paced chunks.
    Acks are read in the background; the time from sending a chunk to its ack is kept."""

    def __init__(self, port: int, run_id: str) -> None:
        self.url = f"ws://{HOST}:{port}/realtime/v2/streams/{run_id}/{KEY}/append"
        self.acked = -1
        self.acks_changed = asyncio.Event()
        self.sent_at: dict[int, float] = {}
        self.ack_ms: array[float] = array("d")
        self.connection: Any = None
        self.acks: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect and store the priming chunk (seq 0), which tells a reader it is live."""
        from websockets.asyncio.client import connect

        self.connection = await connect(self.url, max_size=None, ping_interval=None)
        await self.connection.send(json.dumps({"type": "hello", "writer_id": "bench-fanout"}))
        ready = json.loads(await self.connection.recv())
        if ready.get("type") != "ready" or ready.get("last_seq") != -1:
            raise RuntimeError(f"unexpected answer to hello: {ready}")
        self.acks = asyncio.create_task(self.read_acks())
        await self.connection.send(json.dumps({"type": "chunks", "seq": 0, "chunks": [{}]}))
        if not await self.wait_acked(0, 10):
            raise RuntimeError("the priming chunk was not acknowledged within 10 s")
        self.ack_ms = array("d")

    async def read_acks(self) -> None:
        async for text in self.connection:
            frame = json.loads(text)
            if frame.get("type") == "ack":
                now = time.monotonic()
                for seq in range(self.acked + 1, frame["seq"] + 1):
                    self.ack_ms.append((now - self.sent_at.pop(seq, now)) * 1000)
                self.acked = max(self.acked, frame["seq"])
                self.acks_changed.set()
            elif frame.get("type") == "ended":
                return

    async def wait_acked(self, seq: int, timeout: float) -> bool:
        """Whether chunk ``seq`` was acknowledged within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.acked < seq and time.monotonic() < deadline:
            if self.acks is not None and self.acks.done():
                self.acks.result()  # the connection's error, if it failed
                raise RuntimeError(f"the writer's connection ended at ack {self.acked}")
            self.acks_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acks_changed.wait(), deadline - time.monotonic())
        return self.acked >= seq

    async def send(self, n: int) -> None:
        self.sent_at[n + 1] = time.monotonic()
        await self.connection.send(f'{{"type":"chunks","seq":{n + 1},"chunks":[{make_chunk(n)}]}}')

    async def finish(self, count: int, timeout: float) -> list[str]:
        """Wait for the last ack, then say end; notes on what did not go as it should."""
        started = time.monotonic()
        notes = []
        if not await self.wait_acked(count, timeout):
            notes.append(
                f"the server acknowledged {self.acked} of {count} chunks by {timeout:g} s after "
                "the last send"
            )
        else:
            lag = time.monotonic() - started
            if lag > 1:
                notes.append(f"the last ack came {lag:.1f} s after the last send")
            await self.connection.send(json.dumps({"type": "end"}))
            if self.acks is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.acks), 10)
        if self.ack_ms:
            ordered = array("d", sorted(self.ack_ms))
            notes.append(
                f"writer: chunk sent -> ack p50 {percentile(ordered, 0.5):.2f} ms, "
                f"p99 {percentile(ordered, 0.99):.2f} ms, max {ordered[-1]:.2f} ms"
            )
        return notes

    async def close(self) -> None:
        if self.acks is not None:
            self.acks.cancel()
        if self.connection is not None:
            await self.connection.close()


# -- one scenario ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seconds: float
    client_processes: int
    connect_timeout: float
    drain_seconds: float
    ws_compression: str | None
    logs: Path


def run_scenario(transport: str, readers: int, settings: Settings) -> Outcome:
    """A fresh server (or Redis stream key), the readers, the writer, and the figures."""
    if transport == "redis":
        return asyncio.run(measure(transport, readers, settings, None))
    with runstream_server(live_room(readers), settings.logs) as server:
        outcome = asyncio.run(measure(transport, readers, settings, server))
        if server.process.poll() is not None:
            outcome.notes.append(f"the server exited with {server.process.returncode}")
        problems = server.log_problems()
        outcome.log_problems = len(problems)
        if problems:
            counts = collections.Counter(problems)
            outcome.notes.append(
                f"server log: {len(problems)} lines of errors or warnings:\n"
                + "\n".join(f"    | {n} x {problem}" for problem, n in counts.most_common(6))
            )
        if not outcome.complete or outcome.broken:
            outcome.notes.append(f"server log ({server.log}), last lines:\n{server.log_tail()}")
        return outcome


async def measure(
    transport: str, readers: int, settings: Settings, server: Server | None
) -> Outcome:
    outcome = Outcome(transport, readers)
    count = round(settings.seconds * RATE)
    outcome.expected = count * readers
    writer: RunstreamWriter | RedisWriter
    if server is not None:
        run_id = await asyncio.to_thread(trigger_run, server.url)
        writer = RunstreamWriter(server.port, run_id)
        port, measured = server.port, process_tree(server.pid)
        stream = {
            "ws": f"/realtime/v2/streams/{run_id}/{KEY}",
            "sse": f"/v1/stream/runs/{run_id}/{KEY}",
        }[transport]
    else:
        stream = f"runstream-bench:fanout:{time.time_ns()}"  # the Redis stream's key
        writer = RedisWriter([stream])
        port, measured = REDIS_PORT, await redis_pids()
    clients = ClientProcesses(
        jobs_for(
            transport,
            port,
            [stream] * readers,
            count,
            settings.client_processes,
            connect_timeout=settings.connect_timeout,
            drain_seconds=settings.drain_seconds,
            ws_compression=settings.ws_compression,
        )
    )
    collected: list[ProcessResult] = []
    cpu_before, started, rss = cpu_seconds(measured), time.monotonic(), 0.0
    try:
        with clients:
            try:
                await writer.open()
                clients.start()
                live = await clients.wait_live(settings.connect_timeout + 30)
                if live < readers:
                    outcome.notes.append(
                        f"only {live} of {readers} readers were live after "
                        f"{settings.connect_timeout:g} s; the writer starts anyway"
                    )
                cpu_before, started = cpu_seconds(measured), time.monotonic()
                clients.go()
                await write_paced(writer.send, count, RATE)
                clients.written()
                rss = status_sum(measured, "VmRSS") / 1024
                outcome.notes.extend(await writer.finish(count, settings.drain_seconds))
            except Exception as error:
                outcome.broken = True
                outcome.notes.append(f"the scenario failed: {type(error).__name__}: {error}")
                clients.written()  # the readers still end by their own deadline
            collected = await clients.collect()
        elapsed = time.monotonic() - started
        cpu_after = cpu_seconds(measured)
        cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    finally:
        with contextlib.suppress(Exception):
            await writer.close()
    if (failure := clients.failures(collected)) is not None:
        outcome.broken = True
        outcome.notes.append(failure)
    figures(
        outcome,
        merged(collected),
        len(clients.processes),
        measured,
        cpu,
        elapsed,
        rss or status_sum(measured, "VmRSS") / 1024,
    )
    return outcome


def figures(
    outcome: Outcome,
    total: ProcessResult,
    processes: int,
    measured: list[int],
    cpu: tuple[float, float],
    elapsed: float,
    rss: float,
) -> None:
    outcome.delivered = total.delivered
    outcome.duplicates = total.duplicates
    outcome.out_of_order = total.out_of_order
    if total.reconnects:
        outcome.notes.append(f"{total.reconnects} SSE reconnections (the server ended a response)")
    if total.errors:
        distinct = sorted(set(total.errors))
        outcome.notes.append(
            f"{len(total.errors)} of {outcome.readers} readers fell short, e.g. "
            f"{'; '.join(distinct[:3])}"
        )
    if total.latencies_ms:
        ordered = array("d", sorted(total.latencies_ms))
        outcome.p50, outcome.p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        outcome.max = ordered[-1]
    outcome.client_cpu_percent = 100 * total.cpu_seconds / elapsed
    cores = min(processes, os.cpu_count() or 1)
    if processes and outcome.client_cpu_percent >= 75 * cores:
        outcome.client_bound = True
        outcome.notes.append(
            f"the readers' processes used {outcome.client_cpu_percent:.0f}% CPU of the "
            f"{cores * 100}% they can get: these latencies are the clients' as much as the server's"
        )
    if measured:
        outcome.server_cpu_percent = 100 * sum(cpu) / elapsed
        outcome.notes.append(
            f"{'redis-server' if outcome.transport == 'redis' else 'server'} CPU: "
            f"{100 * cpu[0] / elapsed:.0f}% user, {100 * cpu[1] / elapsed:.0f}% kernel"
        )
        outcome.server_rss_mib = rss
        if outcome.delivered:
            outcome.cpu_us_per_chunk = sum(cpu) * 1e6 / outcome.delivered
    else:
        outcome.notes.append("redis-server is not in this machine's /proc: no CPU or RSS")


# -- the report --------------------------------------------------------------------------------

COLUMNS = (
    f"{'transport':<9} {'R':>5} {'delivered/expected':>21} {'dup':>4} {'ooo':>4} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'srv CPU%':>8} {'RSS MiB':>8} "
    f"{'µs/chunk':>8} {'cli CPU%':>8}"
)


def line(outcome: Outcome) -> str:
    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    delivered = f"{outcome.delivered}/{outcome.expected}"
    return (
        f"{outcome.transport:<9} {outcome.readers:>5} {delivered:>21} {outcome.duplicates:>4} "
        f"{outcome.out_of_order:>4} {number(outcome.p50, 2):>8} {number(outcome.p99, 2):>8} "
        f"{number(outcome.max, 2):>8} {number(outcome.server_cpu_percent):>8} "
        f"{number(outcome.server_rss_mib):>8} {number(outcome.cpu_us_per_chunk):>8} "
        f"{number(outcome.client_cpu_percent):>8}"
    )


def report(outcomes: list[Outcome]) -> None:
    print("\nsummary (latency: chunk sent -> received by a reader, over all readers)")
    print(COLUMNS)
    for outcome in outcomes:
        print(line(outcome))
    redis = {o.readers: o for o in outcomes if o.transport == "redis" and o.p50 and o.p99}
    ratios = []
    for o in outcomes:
        base = redis.get(o.readers)
        if o.transport == "redis" or base is None or not (o.p50 and o.p99):
            continue
        caveats = [
            *(["Runstream delivered only part"] if not o.complete else []),
            *(["Redis readers client-bound"] if base.client_bound else []),
            *(["Runstream readers client-bound"] if o.client_bound else []),
        ]
        ratios.append(
            f"  {o.transport:<4} R={o.readers:<5} p50 x{o.p50 / (base.p50 or 1):.1f}  "
            f"p99 x{o.p99 / (base.p99 or 1):.1f}" + (f"  ({'; '.join(caveats)})" * bool(caveats))
        )
    if ratios:
        print("\nRunstream latency / Redis latency at the same R")
        print("\n".join(ratios))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="R = 1, 10; 2 s each; for CI")
    parser.add_argument("--readers", default="1,100,1000", help="reader counts, comma-separated")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="of ws, sse, redis")
    parser.add_argument("--seconds", type=float, default=20.0, help="writing time per scenario")
    parser.add_argument("--client-processes", type=int, default=2, help="processes of readers")
    parser.add_argument(
        "--ws-compression",
        choices=("deflate", "none"),
        default="deflate",
        help="websocket readers offer permessage-deflate, as the SDK and browsers do (default)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.readers, args.seconds = "1,10", 2.0
    args.reader_counts = [int(part) for part in args.readers.split(",") if part]
    args.transport_list = [part for part in args.transports.split(",") if part]
    unknown = set(args.transport_list) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transports: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_arguments()
    raise_fd_limit()
    transports = list(args.transport_list)
    if "redis" in transports and not redis_reachable():
        print(f"note: Redis is not reachable at {HOST}:{REDIS_PORT}; its line is skipped")
        transports.remove("redis")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"fan-out: 1 writer at {RATE} chunks/s of ~{CHUNK_BYTES} B, {args.seconds:g} s per "
        f"scenario, readers in {args.client_processes} client processes, "
        f"{os.cpu_count()} CPUs, open files limit {soft}"
    )
    print(COLUMNS)
    outcomes: list[Outcome] = []
    failed = keep_logs = False
    logs = Path(tempfile.mkdtemp(prefix="fanout-logs-"))
    settings = Settings(
        seconds=args.seconds,
        client_processes=max(1, args.client_processes),
        connect_timeout=10.0 if args.smoke else 60.0,
        drain_seconds=10.0 if args.smoke else 30.0,
        ws_compression=None if args.ws_compression == "none" else "deflate",
        logs=logs,
    )
    try:
        for readers in args.reader_counts:
            for transport in transports:
                outcome = run_scenario(transport, readers, settings)
                outcomes.append(outcome)
                print(line(outcome), flush=True)
                for note in outcome.notes:
                    print(f"    note: {note}", flush=True)
                failed |= outcome.broken or (args.smoke and not outcome.complete)
                keep_logs |= outcome.broken or not outcome.complete or outcome.log_problems > 0
    finally:
        if keep_logs:
            print(f"\nthe server logs are kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    report(outcomes)
    if failed:
        print("\nFAILED: the benchmark broke" + (", or a reader missed chunks" * args.smoke))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
