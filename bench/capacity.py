"""The capacity scenarios of ``python -m bench``: how many chunks one SDK pipe stores per
second, what an idle live reader costs a server, and what scaling out to PostgreSQL, Redis and
two processes does to appends and deliveries.

- ``ws_pipe``: one SDK pipe (bench/pipe.py) of 100-byte JSON chunks over the websocket append
  route to a run stream of Runstream on SQLite, from the first chunk until the server has
  acknowledged the last (each acknowledgement follows a commit): chunks per second, against
  the project's target of 100,000. Beside it, the near-limit line: Redis XADDs of the same
  chunks from redis-py, pipelined in batches as large as the SDK's frames, in Redis's memory.
- ``idle_readers``: 1,000 live readers at the tail of one stream, held from client processes
  (bench/connections.py), on a fresh server for each kind of reader, so that no earlier
  scenario's heap hides or adds to what the readers cost: RSS and descriptors of the server's
  processes, the readers' less a baseline with a few readers of the same kind already open
  (which leaves out what the first reader costs once: imports, caches). Runstream's websocket,
  SSE and long-poll readers; the reference server's SSE and long-poll readers.
- ``sqlite_vs_postgres``: the workload of bench/scale.py on both of Runstream's deployments,
  each a server started for this scenario: SQLite and its in-process hub in one process, and
  PostgreSQL with the Redis hub in two worker processes (each connection goes to whichever
  takes it, so that some readers are in the writer's process and some are not): writers
  appending one message at a time to streams of their own (appends per second, every message
  read back), then one writer at 100 chunks/s to live SSE readers (append sent to chunk
  received, p50 and p99). The ratios are the scaled-out deployment's
  figures over SQLite's. PostgreSQL is ``RUNSTREAM_BENCH_DATABASE_URL`` (a database of its
  own: its tables are dropped), Redis ``RUNSTREAM_BENCH_REDIS_URL``; a deployment that cannot
  run is skipped, saying why.

Not a script: harness.py imports its scenarios, and it imports harness's Run; run them with
``python -m bench --only ws_pipe,idle_readers,sqlite_vs_postgres``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx
import pipe
import scale
from connections import KEY, ClientJob, Clients, Snapshot, describe, merged, reader_path, split
from harness import Run, Scenario, ScenarioFailed
from peers import REFERENCE, SQLITE, Server, node_ready, reference_server, runstream_server
from results import Measure

from runstream._ws import MAX_FRAME_BYTES
from runstream.errors import RunstreamError
from runstream.wire import MAX_CHUNKS_PER_FRAME, encode_chunk

# A sample of each system compared: the figures of one round.
Sample = Callable[[], dict[Measure, float]]


def record_medians(run: Run, rounds: int, systems: list[tuple[str, Sample]], note: str) -> None:
    """Sample every system in each of ``rounds`` rounds, in alternating order, and record the
    median of each figure, noting the rounds and ``note``."""
    samples: dict[tuple[Measure, str], list[float]] = {}
    for round_number in range(rounds):
        for system, sample in run.alternating(systems, round_number):
            for measure, value in sample().items():
                samples.setdefault((measure, system), []).append(value)
    for (measure, system), values in samples.items():
        medians = [f"median of {len(values)} rounds"] if len(values) > 1 else []
        run.results.add(measure, system, statistics.median(values), "; ".join([*medians, note]))


# -- the SDK's websocket pipe, and Redis ---------------------------------------------------------

CHUNK = {"token": "x" * 88}  # 100 bytes of JSON as the SDK sends and stores it
PIPE = "SDK websocket pipe, 100-byte JSON chunks to a run stream: first chunk → all stored"
PIPE_RATE = Measure(PIPE, "rate", "chunks/s", True)
REDIS = "Redis (XADD pipelined, in memory)"


def frame_chunks() -> int:
    """How many chunks the SDK's writer sends in one frame (it fills frames up to
    MAX_FRAME_BYTES, each chunk and its comma): the batch of the Redis line."""
    return min(MAX_CHUNKS_PER_FRAME, MAX_FRAME_BYTES // (len(encode_chunk(CHUNK)) + 1))


def sdk_pipe(server: Server, count: int) -> dict[Measure, float]:
    try:
        stored, _ = asyncio.run(pipe.measure(server.url, count, CHUNK, follow=False))
    except RunstreamError as error:
        raise ScenarioFailed(f"the SDK's pipe to {server.name} failed: {error}") from error
    return {PIPE_RATE: stored}


def redis_xadd(url: str, count: int, batch: int) -> dict[Measure, float]:
    """XADDs of ``count`` chunks to a new Redis stream, ``batch`` to a pipeline (no
    transaction), timed until the last pipeline's replies. Each pipeline's replies are read
    before the next is sent, where the SDK sends frame after frame: if anything, Redis is
    held back."""
    import redis

    client = redis.Redis.from_url(url)
    key = f"bench:pipe:{uuid.uuid4().hex}"
    fields = {"chunk": encode_chunk(CHUNK)}
    try:
        started = time.perf_counter()
        for first in range(0, count, batch):
            pipeline = client.pipeline(transaction=False)
            for _ in range(min(batch, count - first)):
                pipeline.xadd(key, fields)
            pipeline.execute()
        elapsed = time.perf_counter() - started
        stored = client.xlen(key)
    finally:
        client.delete(key)
        client.close()
    if stored != count:
        raise ScenarioFailed(f"Redis holds {stored} of the {count} chunks XADDed")
    return {PIPE_RATE: count / elapsed}


def ws_pipe(run: Run) -> None:
    count = 5_000 if run.smoke else 100_000
    runstream = run.servers[0]
    systems: list[tuple[str, Sample]] = [(runstream.name, lambda: sdk_pipe(runstream, count))]
    if (why_not := scale.redis_problem(scale.DEFAULT_REDIS_URL)) is None:
        batch = frame_chunks()
        systems.append((REDIS, lambda: redis_xadd(scale.DEFAULT_REDIS_URL, count, batch)))
    else:
        run.results.skip(f"{PIPE}: {REDIS}", why_not)
    record_medians(run, run.rounds, systems, f"{count:,} chunks")


# -- idle live readers -------------------------------------------------------------------------

KIND_NAMES = {"ws": "websocket", "sse": "SSE", "long-poll": "long-poll"}
WARM_READERS = 10  # open at the baseline
CLIENT_PROCESSES = 2
CONNECT_TIMEOUT = 10.0
OPEN_SECONDS = 60.0
SETTLE_SECONDS = 0.5  # after the last reader is live, before the server is measured
IDLE_ROUNDS = 2  # at most: each round starts five fresh servers


@dataclass(frozen=True)
class IdleSystem:
    """A server whose idle readers are measured: how to start a fresh one, the kinds of reader
    it serves, and where they read (a stream it is given, with one message)."""

    name: str
    start: Callable[[], AbstractContextManager[Server]]
    kinds: tuple[str, ...]
    paths: Callable[[Server], dict[str, str]]  # kind: the path its readers read


def idle_title(readers: int) -> str:
    return f"{readers:,} idle live readers of one stream: what each costs the server's processes"


def idle_measures(kind: str, readers: int) -> tuple[Measure, Measure]:
    name = KIND_NAMES[kind]
    return (
        Measure(idle_title(readers), f"{name}: RSS per reader", "KiB", False),
        Measure(idle_title(readers), f"{name}: descriptors per reader", "fds", False),
    )


def runstream_paths(server: Server) -> dict[str, str]:
    """A run whose stream holds one chunk; where each kind of reader reads it."""
    run_id = scale.trigger_run(server.url)
    httpx.post(
        f"{server.url}{reader_path('sse', run_id)}",
        content='[{"n": 0}]',
        headers={"Content-Type": "application/json"},
    ).raise_for_status()
    return {kind: reader_path(kind, run_id) for kind in KIND_NAMES}


def stream_paths(server: Server) -> dict[str, str]:
    """A Durable Streams stream holding one message, for SSE and long-poll readers."""
    path = f"/v1/stream/bench/{KEY}-{uuid.uuid4().hex[:12]}"
    httpx.put(
        f"{server.url}{path}", content='[{"n": 0}]', headers={"Content-Type": "application/json"}
    ).raise_for_status()
    return {"sse": path, "long-poll": path}


def hold_readers(clients: Clients, kind: str, total: int, server: Server) -> int:
    """Have the client processes hold ``total`` readers; raise unless they are all live a
    moment later."""
    shares = [(share, OPEN_SECONDS) for share in split(total, CLIENT_PROCESSES)]
    clients.command("open", shares, OPEN_SECONDS + CONNECT_TIMEOUT + 60)
    time.sleep(SETTLE_SECONDS)
    report = merged(clients.command("status", None, 30))
    if report.live < total:
        raise ScenarioFailed(
            f"{server.name} holds {report.live} of {total} {KIND_NAMES[kind]} readers; "
            f"failed: {describe(report.failed) or '-'}; lost: {describe(report.lost) or '-'}"
        )
    return report.live


def reader_cost(system: IdleSystem, kind: str, readers: int) -> dict[Measure, float]:
    """On a fresh server: its RSS (KiB) and descriptors per idle reader of ``kind``."""
    with system.start() as server:
        path = system.paths(server)[kind]
        clients = Clients(
            ClientJob(0, kind, server.port, path, CONNECT_TIMEOUT, os.getpid()), CLIENT_PROCESSES
        )
        try:
            hold_readers(clients, kind, WARM_READERS, server)
            before = Snapshot.of(server.pid)
            hold_readers(clients, kind, WARM_READERS + readers, server)
            after = Snapshot.of(server.pid)
            clients.command("close", None, 30)
        finally:
            clients.stop()
    rss, fds = idle_measures(kind, readers)
    return {
        rss: (after.rss_mib - before.rss_mib) * 1024 / readers,
        fds: (after.fds - before.fds) / readers,
    }


def idle_readers(run: Run) -> None:
    readers = 50 if run.smoke else 1_000
    systems = [
        IdleSystem(SQLITE, lambda: runstream_server(run.logs), tuple(KIND_NAMES), runstream_paths)
    ]
    if (why_not := node_ready()) is None:
        systems.append(
            IdleSystem(
                REFERENCE, lambda: reference_server(run.logs), ("sse", "long-poll"), stream_paths
            )
        )
    else:
        run.results.skip(f"{idle_title(readers)}: {REFERENCE}", why_not)
    rounds = min(run.rounds, IDLE_ROUNDS)
    fewer = f"; {rounds} of the run's {run.rounds} rounds" if rounds < run.rounds else ""
    record_medians(
        run,
        rounds,
        [(system.name, functools.partial(idle_sample, system, readers)) for system in systems],
        f"{readers:,} readers beside {WARM_READERS}, a fresh server for each kind{fewer}",
    )


def idle_sample(system: IdleSystem, readers: int) -> dict[Measure, float]:
    figures: dict[Measure, float] = {}
    for kind in system.kinds:
        figures |= reader_cost(system, kind, readers)
    return figures


# -- SQLite against PostgreSQL and Redis ---------------------------------------------------------

POSTGRES = "Runstream (PostgreSQL + Redis, 2 processes)"
STORES = (
    "SQLite, 1 process, against PostgreSQL + Redis, 2 processes: writers appending one at a "
    "time, then 100 chunks/s to live SSE readers"
)
APPENDS = Measure(STORES, "appends", "appends/s", True, baseline=SQLITE)
DELIVERY_P50 = Measure(STORES, "append → delivery p50", "ms", False, baseline=SQLITE)
DELIVERY_P99 = Measure(STORES, "append → delivery p99", "ms", False, baseline=SQLITE)


@dataclass(frozen=True)
class Workload:
    """bench/scale.py's two parts, as this scenario runs them."""

    appends: scale.ThroughputSettings
    deliveries: scale.LatencySettings

    @classmethod
    def of(cls, smoke: bool) -> Workload:
        seconds = 1.0 if smoke else 5.0
        return cls(
            scale.ThroughputSettings(
                writers=4 if smoke else 16,
                seconds=seconds,
                client_processes=1 if smoke else 2,
                shared=False,
            ),
            scale.LatencySettings(
                readers=5 if smoke else 20,
                seconds=seconds,
                client_processes=1,
                connect_timeout=10.0,
                drain_seconds=2.0,
            ),
        )

    def describe(self) -> str:
        a, d = self.appends, self.deliveries
        return (
            f"{a.writers} writers on streams of their own for {a.seconds:g} s, then "
            f"{d.readers} readers for {d.seconds:g} s"
        )


def store_sample(server: Server, workers: int, workload: Workload) -> dict[Measure, float]:
    appends = scale.ThroughputOutcome(
        workers, "own", workload.appends.writers, workload.appends.seconds
    )
    asyncio.run(scale.measure_throughput(appends, server, None, workload.appends))
    if appends.broken or appends.corrupt or appends.appends_per_second is None:
        raise ScenarioFailed(
            f"appends to {server.name}: {appends.lost} lost, {appends.duplicates} repeated, "
            f"{appends.out_of_order} out of order; {'; '.join(appends.notes)}"
        )
    deliveries = scale.LatencyOutcome(server.name, "sse", "A", workload.deliveries.readers)
    asyncio.run(scale.measure_latency(deliveries, server, server, workload.deliveries))
    if deliveries.broken or not deliveries.complete or deliveries.latency is None:
        raise ScenarioFailed(
            f"deliveries from {server.name}: {deliveries.delivered} of {deliveries.expected} "
            f"chunks, {deliveries.duplicates} repeated; {'; '.join(deliveries.notes)}"
        )
    p50, p99, _ = deliveries.latency
    return {APPENDS: appends.appends_per_second, DELIVERY_P50: p50, DELIVERY_P99: p99}


def scale_out_problem() -> str | None:
    """Why the PostgreSQL + Redis deployment cannot run here, or None."""
    for what, url, problem in (
        ("PostgreSQL", scale.DEFAULT_DATABASE_URL, scale.postgres_problem),
        ("Redis", scale.DEFAULT_REDIS_URL, scale.redis_problem),
    ):
        if (why := problem(url)) is not None:
            return (
                f"{what} at {url} is unreachable: {why} (RUNSTREAM_BENCH_DATABASE_URL and "
                "RUNSTREAM_BENCH_REDIS_URL say where: a database the benchmark may empty)"
            )
    return None


def sqlite_vs_postgres(run: Run) -> None:
    workload = Workload.of(run.smoke)
    with contextlib.ExitStack() as stack:
        deployments = [(stack.enter_context(runstream_server(run.logs)), 1)]
        if (why_not := scale_out_problem()) is None:
            url, redis_url = scale.DEFAULT_DATABASE_URL, scale.DEFAULT_REDIS_URL
            scale.reset_schema(url)
            server = scale.runstream_server(POSTGRES, url, redis_url, 2, run.logs)
            deployments.append((stack.enter_context(server), 2))
        else:
            run.results.skip(f"{STORES}: {POSTGRES}", why_not)
        record_medians(
            run,
            run.rounds,
            [
                (server.name, functools.partial(store_sample, server, workers, workload))
                for server, workers in deployments
            ],
            workload.describe(),
        )


CAPACITY_SCENARIOS = [
    Scenario("ws_pipe", ws_pipe),
    Scenario("idle_readers", idle_readers),
    Scenario("sqlite_vs_postgres", sqlite_vs_postgres),
]
