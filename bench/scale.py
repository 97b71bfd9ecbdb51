"""Scale-out: cross-process append -> delivery latency, and append throughput of 1 vs 4 processes.

    python bench/scale.py                       # both parts, Redis hub, 100 readers, 20 s each
    python bench/scale.py --smoke               # 10 readers, 3 s each: a CI check (< 60 s)
    python bench/scale.py --hub both --transports sse,ws
    python bench/scale.py --parts throughput --writers 64 --seconds 10
    python bench/scale.py --database-url postgresql://postgres@127.0.0.1:5432/test_a \\
        --redis-url redis://127.0.0.1:6379/0

Both parts run fresh ``runstream serve`` processes (``python -m runstream.server serve --port
P``) on one PostgreSQL database (``--database-url``, default ``$RUNSTREAM_BENCH_DATABASE_URL``
or ``postgresql://postgres@127.0.0.1:5432/test_a``), each with an instance folder of its own
(``RUNSTREAM_INSTANCE_PATH``) and ``RUNSTREAM_AUTH=disabled``. Before each server (or pair of
servers) starts, Runstream's tables and ``alembic_version`` are dropped from that database: the
server migrates a fresh schema on start. Use a database of its own: it is wiped.

1. Cross-process latency (per hub of ``--hub``). Two servers, A and B, on one database; with
   ``--hub redis`` both get ``RUNSTREAM_REDIS_URL`` (``--redis-url``, default
   ``$RUNSTREAM_BENCH_REDIS_URL`` or ``redis://127.0.0.1:6379/0``) and hear each other's commits
   over Redis pub/sub; with ``--hub postgres`` they get no Redis URL, which leaves the server to
   pick its PostgreSQL ``LISTEN``/``NOTIFY`` hub (where the server has none, B's readers hear
   only the store's slow timer, if any: that shows as missing chunks and long latencies).
   A is started and serving (it answers a request) before B. One writer appends 100 chunks/s
   (about 100 bytes of JSON each, carrying its send time), paced by an absolute schedule (chunk
   n at start + n/100 s), one HTTP POST per chunk (``POST /v1/stream/runs/<run>/scale``, one
   keep-alive connection, each POST waiting for its 204) through A. R readers (``--readers``)
   follow that stream live from client processes apart from the servers (asyncio, raw
   sockets): over SSE (Durable Streams ``GET /v1/stream/runs/<run>/scale?offset=-1&live=sse``)
   and/or websockets (``/realtime/v2/streams/<run>/scale``), by ``--transports``. They are all
   live before the writer starts, so each must get every chunk exactly once and in order.
   Latency is a chunk's send time to its arrival at a reader, over all readers and chunks:
   p50, p99, max (ms), against the target p99 <= 20 ms. It is measured with the readers on B
   (across processes, the figure of the target), then on A (the writer's own process: the
   in-process baseline), on the same pair of servers with a new run stream each.

2. Append throughput (on the Redis hub unless ``--hub postgres``). One server with
   ``--workers 1``, then one with ``--workers 4`` (gunicorn's gevent workers sharing the port).
   W writers (``--writers``, spread over ``--client-processes`` spawned processes, each an
   asyncio loop of raw keep-alive HTTP/1.1 connections: cheaper per request than an HTTP
   library, so that on a small machine the clients leave the cores to the server) each append
   one-message JSON batches (``POST /v1/stream/<path>``, ``Content-Type: application/json``)
   one after the other, for T seconds, to a stream of its own created beforehand with ``PUT``;
   then all W to one shared stream, for T seconds more. Appends/s counts the 204s that came
   within T. Afterwards every stream is read back from its start: each writer's messages must
   be there, each once, in its order (a writer's ``n`` counts 0, 1, ...), and nothing else.
   Printed: appends/s for 1 and 4 processes and their ratio, against the target 4 processes
   >= 2.5 x 1; the POST latency p50/p99; server, PostgreSQL (all its processes on this
   machine, whatever database they serve) and client CPU; and ``os.cpu_count()``: on a machine
   of few cores, shared, the clients, the servers and PostgreSQL share them, and the ratio shows
   it.

Each server's output goes to a log file: its errors and warnings are summed up after each part,
and its tail is printed when something goes wrong. Figures only: nothing is asserted about
time. The exit status is 1 if the benchmark itself breaks (a server does not start, a client
process fails) or if a chunk is lost, repeated or reordered (in any mode; with ``--smoke``,
also if a reader did not get every chunk); 2 if PostgreSQL (or, for the Redis hub, Redis) is
unreachable with ``--smoke``; without ``--smoke`` that part is skipped, saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import peers
from live import Tally, read_body_part
from peers import Server, ServerRefused
from procstat import cpu_seconds, percentile, process_tree, raise_fd_limit

HOST = "127.0.0.1"
KEY = "scale"  # the run stream's key in the latency part
RATE = 100  # chunks per second
CHUNK_BYTES = 100
TARGET_P99_MS = 20.0
TARGET_RATIO = 2.5
HUBS = ("redis", "postgres")
Key = tuple[int, int]  # a writer's number and an append's n
TRANSPORTS = ("sse", "ws")
CONNECTS_AT_ONCE = 50  # per client process: connection attempts in flight at once
# What the benchmarks use (--database-url, --redis-url) unless told otherwise.
DEFAULT_DATABASE_URL = (
    os.environ.get("RUNSTREAM_BENCH_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test_a"
)
DEFAULT_REDIS_URL = os.environ.get("RUNSTREAM_BENCH_REDIS_URL") or "redis://127.0.0.1:6379/0"


def make_chunk(fields: str) -> bytes:
    """About CHUNK_BYTES of JSON: ``fields`` (``"n":1,...``), its send time and padding."""
    chunk = f'{{"t":{time.time():.6f},{fields},"pad":"'
    return (chunk + "x" * max(0, CHUNK_BYTES - len(chunk) - 2) + '"}').encode()


def summary(samples: Sequence[float]) -> tuple[float, float, float] | None:
    """p50, p99 and max of ``samples``, or None if there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1]


# -- PostgreSQL and Redis ----------------------------------------------------------------------


def postgres_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot be used, or None."""
    from runstream.server.db import make_engine

    try:
        make_engine(url).dispose()
    except Exception as error:  # DatabaseUnavailable, or a driver's error
        return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    return None


def redis_problem(url: str) -> str | None:
    """Why the Redis at ``url`` cannot be used (redis-py missing, say), or None."""
    try:
        import redis
    except ImportError as error:
        return f"redis-py is not installed ({error})"
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


def reset_schema(url: str) -> None:
    """Drop Runstream's tables (and alembic's): the next server to start migrates afresh."""
    from sqlalchemy import text

    from runstream.server.db import make_engine
    from runstream.server.db.models import Base

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


def postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's first process, if it runs in this machine's /proc: its
    backends, which come and go with connections, are its children."""
    from sqlalchemy import text

    from runstream.server.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            backend = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        stat = Path(f"/proc/{backend}/stat").read_text()
        postmaster = int(stat[stat.rfind(")") + 2 :].split()[1])
    except (OSError, ValueError):
        return None
    finally:
        engine.dispose()
    return postmaster


def tree_cpu(root: int) -> dict[int, float]:
    """The CPU seconds (user + kernel) of ``root`` and of each of its descendants so far."""
    return {pid: sum(cpu_seconds([pid])) for pid in process_tree(root)}


def cpu_since(root: int, before: dict[int, float]) -> float:
    """The CPU seconds spent since ``before`` by ``root``'s processes: those started since
    count in full (PostgreSQL's backends come with connections); those gone since, not at all."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in tree_cpu(root).items())


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far, over all its cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # less idle and iowait


def machine_busy(before: tuple[int, int]) -> float:
    """The % of the machine's CPU (all cores) in use since ``before``, by anyone."""
    busy, total = machine_ticks()
    return 100 * (busy - before[0]) / max(1, total - before[1])


# -- the servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def runstream_server(
    name: str, database_url: str, redis_url: str | None, workers: int, logs: Path
) -> Iterator[Server]:
    """``runstream serve`` on the database (and Redis), auth disabled, with ``workers``
    processes, ready when it is yielded, stopped on the way out."""
    env = {"RUNSTREAM_DATABASE_URL": database_url}
    if redis_url:
        env["RUNSTREAM_REDIS_URL"] = redis_url
    with peers.runstream_server(logs, name=name, env=env, workers=workers) as server:
        yield server


def log_notes(servers: Sequence[Server], show_tail: bool) -> tuple[int, list[str]]:
    """The number of error or warning lines in the servers' logs, and notes about them."""
    total, notes = 0, []
    for server in servers:
        if server.process.poll() is not None:
            notes.append(f"server {server.name} exited with {server.process.returncode}")
        problems = server.log_problems()
        total += len(problems)
        if problems:
            counts = collections.Counter(problems)
            notes.append(
                f"server {server.name} log: {len(problems)} lines of errors or warnings:\n"
                + "\n".join(f"    | {n} x {problem}" for problem, n in counts.most_common(6))
            )
        if show_tail:
            notes.append(
                f"server {server.name} log ({server.log}), last lines:\n{server.log_tail()}"
            )
    return total, notes


# -- raw HTTP/1.1 ------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection, one request at a time: cheap for a load generator."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; it reconnects if the server had closed
        the connection, and raises OSError (or IncompleteReadError) if the request fails."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            response = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = response.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                content = b""
                while part := await read_body_part(self.reader, True):
                    content += part
            else:
                content = await self.reader.readexactly(int(headers.get("content-length", 0)))
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return int(status_line.split()[1]), headers, content
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


def wait_go(go: Event, timeout: float) -> None:
    """Block until the main process says go (or ``timeout`` passes)."""
    go.wait(timeout)


# -- part 1: latency, the readers (in client processes) ----------------------------------------


@dataclass(frozen=True)
class ReaderJob:
    """What one client process does: hold ``readers`` readers of one run stream."""

    index: int
    transport: str
    port: int
    run_id: str
    readers: int
    expected: int  # chunks each reader must get
    connect_timeout: float
    drain_seconds: float  # how long, once the writer is done, the readers may still take
    max_seconds: float  # the most the writer may take, after go


@dataclass
class ReaderResult:
    """The tallies of one client process, summed."""

    index: int
    live: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    reconnects: int = 0
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def reader_process(
    job: ReaderJob, ready: Queue[tuple[int, int]], go: Event, done: Event, results: Queue[Any]
) -> None:
    """A client process: hold ``job.readers`` readers, say how many are live, then follow the
    stream until each has every chunk, or until ``job.drain_seconds`` after the writer is
    ``done``; put the summed tallies."""
    raise_fd_limit()
    results.put(asyncio.run(run_readers(job, ready, go, done)))


async def run_readers(
    job: ReaderJob, ready: Queue[tuple[int, int]], go: Event, done: Event
) -> ReaderResult:
    follow = follow_sse if job.transport == "sse" else follow_websocket
    tallies = [Tally(job.expected) for _ in range(job.readers)]
    all_live = asyncio.Event()
    connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)

    def on_live(tally: Tally) -> None:
        if not tally.live:
            tally.live = True
            if all(t.live for t in tallies):
                all_live.set()

    async def reader(tally: Tally) -> None:
        try:
            await follow(job, tally, connecting, lambda: on_live(tally))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            tally.error = f"{type(error).__name__}: {error}"

    tasks = [asyncio.create_task(reader(tally)) for tally in tallies]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_live.wait(), job.connect_timeout)
    ready.put((job.index, sum(t.live for t in tallies)))
    await asyncio.to_thread(wait_go, go, job.connect_timeout + 60)
    cpu_start = sum(os.times()[:2])
    pending = [task for task in tasks if not task.done()]
    if pending:

        async def drained() -> None:
            await asyncio.to_thread(done.wait, job.max_seconds)
            await asyncio.sleep(job.drain_seconds)

        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(asyncio.gather(*pending, return_exceptions=True)),
            asyncio.create_task(drained()),
        ]
        await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
        waiters[1].cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result = ReaderResult(job.index, cpu_seconds=sum(os.times()[:2]) - cpu_start)
    for tally in tallies:
        result.live += tally.live
        result.delivered += tally.delivered
        result.duplicates += tally.duplicates
        result.out_of_order += tally.out_of_order
        result.reconnects += tally.reconnects
        result.latencies_ms.extend(tally.latencies_ms)
        if tally.error is not None:
            result.errors.append(tally.error)
        elif not tally.done:
            result.errors.append(f"a reader got {tally.delivered} of {tally.expected} chunks")
    return result


async def follow_sse(
    job: ReaderJob, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """An SSE reader from the stream's start (the priming chunk), over a raw HTTP/1.1
    connection; it resumes from the last control event's offset if the server ends the
    response."""
    offset = "-1"
    while not tally.done:
        async with connecting:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, job.port, limit=1 << 22), 60
            )
        try:
            path = f"/v1/stream/runs/{job.run_id}/{KEY}?offset={offset}&live=sse"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{job.port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"SSE read refused: {head.splitlines()[0]!r}")
            chunked = b"transfer-encoding: chunked" in head.lower()
            pending = b""
            while not tally.done:
                data = await read_body_part(reader, chunked)
                if not data:
                    break
                received_at = time.time()
                *events, pending = (pending + data).split(b"\n\n")
                for event in events:
                    if event.startswith(b"event: data"):
                        payload = b"\n".join(
                            line[5:] for line in event.split(b"\n")[1:] if line.startswith(b"data:")
                        )
                        for chunk in json.loads(payload):
                            tally.add(chunk, received_at)
                    elif event.startswith(b"event: control"):
                        offset = event.split(b"\nid:", 1)[1].split(b"\n", 1)[0].decode()
                        on_live()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not tally.done:
            tally.reconnects += 1


async def follow_websocket(
    job: ReaderJob, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """A websocket reader from index 0: the priming chunk, then every chunk as it comes."""
    from websockets.asyncio.client import connect

    url = (
        f"ws://{HOST}:{job.port}/realtime/v2/streams/{job.run_id}/{KEY}"
        "?start_index=0&timeout_in_seconds=60"
    )
    async with connecting:
        connection = await connect(url, max_size=None, ping_interval=None, open_timeout=60)
    try:
        async for text in connection:
            received_at = time.time()
            frame = json.loads(text)
            if frame["type"] == "end":
                return
            for chunk in frame["chunks"]:
                tally.add(chunk, received_at)
            on_live()
            if tally.done:
                return
    finally:
        await connection.close()


# -- part 1: latency, the writer and one scenario ----------------------------------------------


@dataclass
class LatencyOutcome:
    hub: str
    transport: str
    placement: str  # "B" (across processes) or "A" (the writer's process)
    readers: int
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    latency: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)
    broken: bool = False  # the benchmark itself failed (a client process or the writer)

    @property
    def complete(self) -> bool:
        return self.delivered == self.expected and self.duplicates == 0

    @property
    def corrupt(self) -> bool:
        """A chunk repeated or reordered: never right, however slow the server."""
        return self.duplicates > 0 or self.out_of_order > 0


@dataclass(frozen=True)
class LatencySettings:
    readers: int
    seconds: float
    client_processes: int
    connect_timeout: float
    drain_seconds: float


def trigger_run(url: str) -> str:
    import httpx

    with httpx.Client(base_url=url) as client:
        response = client.post("/api/v1/tasks/bench-scale/trigger", json={"payload": {}})
        response.raise_for_status()
        return str(response.json()["id"])


async def write_paced(http: Http, path: str, count: int, ack_ms: array[float]) -> None:
    """POST chunk n at start + n/RATE, each waiting for its 204: a late chunk goes at once,
    and the schedule holds."""
    started = time.monotonic()
    for n in range(count):
        delay = started + n / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.monotonic()
        status, _, body = await http.request("POST", path, b"[" + make_chunk(f'"n":{n}') + b"]")
        if status != 204:
            raise RuntimeError(f"append {n} answered {status}: {body[:200]!r}")
        ack_ms.append((time.monotonic() - sent) * 1000)


async def measure_latency(
    outcome: LatencyOutcome, writer_server: Server, reader_server: Server, s: LatencySettings
) -> None:
    count = round(s.seconds * RATE)
    outcome.expected = count * s.readers
    run_id = await asyncio.to_thread(trigger_run, writer_server.url)
    path = f"/v1/stream/runs/{run_id}/{KEY}"
    http = Http(writer_server.port)
    context = multiprocessing.get_context("spawn")
    ready: Queue[tuple[int, int]] = context.Queue()
    results: Queue[Any] = context.Queue()
    go, done = context.Event(), context.Event()
    processes: list[SpawnProcess] = []
    collected: list[ReaderResult] = []
    ack_ms: array[float] = array("d")
    measured = [*writer_server.pids, *reader_server.pids]
    cpu_before, started = cpu_seconds(measured), time.monotonic()
    machine_before = machine_ticks()
    try:
        try:
            # The priming chunk creates the stream: the readers start from it.
            status, _, body = await http.request("POST", path, b"[{}]")
            if status != 204:
                raise RuntimeError(f"the priming append answered {status}: {body[:200]!r}")
            for index, share in enumerate(split(s.readers, s.client_processes)):
                job = ReaderJob(
                    index,
                    outcome.transport,
                    reader_server.port,
                    run_id,
                    share,
                    count,
                    s.connect_timeout,
                    s.drain_seconds,
                    3 * s.seconds + 60,
                )
                process = context.Process(
                    target=reader_process, args=(job, ready, go, done, results)
                )
                process.start()
                processes.append(process)
            live = await wait_ready(ready, processes, s.connect_timeout + 30)
            if live < s.readers:
                outcome.notes.append(
                    f"only {live} of {s.readers} readers were live after "
                    f"{s.connect_timeout:g} s; the writer starts anyway"
                )
            cpu_before, started = cpu_seconds(measured), time.monotonic()
            machine_before = machine_ticks()
            go.set()
            await write_paced(http, path, count, ack_ms)
            wrote = time.monotonic() - started
            outcome.notes.append(
                f"writer: {count} chunks in {wrote:.1f} s, {count / wrote:.0f}/s of {RATE}/s "
                "scheduled (one POST at a time: a slow POST delays the next ones)"
            )
        except Exception as error:
            outcome.broken = True
            outcome.notes.append(f"the scenario failed: {type(error).__name__}: {error}")
        go.set()
        done.set()  # the readers end by drain_seconds from now
        if processes:
            collected = await collect(results, processes, s.drain_seconds + 60)
        elapsed = time.monotonic() - started
        cpu_after = cpu_seconds(measured)
    finally:
        go.set()
        done.set()
        stop(processes)
        await http.close()
    if len(collected) < len(processes) or any(p.exitcode != 0 for p in processes):
        outcome.broken = True
        outcome.notes.append(
            f"{len(processes) - len(collected)} client processes gave no result "
            f"(exit codes {[p.exitcode for p in processes]})"
        )
    latencies: array[float] = array("d")
    errors: list[str] = []
    client_cpu = reconnects = 0.0
    for result in collected:
        outcome.delivered += result.delivered
        outcome.duplicates += result.duplicates
        outcome.out_of_order += result.out_of_order
        latencies.extend(result.latencies_ms)
        client_cpu += result.cpu_seconds
        reconnects += result.reconnects
        errors.extend(result.errors)
    outcome.latency = summary(latencies)
    if reconnects:
        outcome.notes.append(f"{reconnects:g} SSE reconnections (the server ended a response)")
    if errors:
        distinct = sorted(set(errors))
        outcome.notes.append(
            f"{len(errors)} of {outcome.readers} readers fell short, e.g. {'; '.join(distinct[:3])}"
        )
    writer = summary(ack_ms)
    if writer is not None:
        outcome.notes.append(
            f"writer: POST -> 204 p50 {writer[0]:.2f} ms, p99 {writer[1]:.2f} ms, "
            f"max {writer[2]:.2f} ms"
        )
    cpu = sum(cpu_after) - sum(cpu_before)
    outcome.notes.append(
        f"CPU over {elapsed:.1f} s: servers A+B {100 * cpu / elapsed:.0f}%, "
        f"readers {100 * client_cpu / elapsed:.0f}% (of one core each); the machine "
        f"{machine_busy(machine_before):.0f}% busy (of all {os.cpu_count()} cores, anyone's use)"
    )


def split(total: int, parts: int) -> list[int]:
    """``total`` over at most ``parts`` processes, none of them empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


async def wait_ready(
    ready: Queue[tuple[int, int]], processes: list[SpawnProcess], timeout: float
) -> int:
    """The sum of what every client process reported, once they all have."""
    total, reported, deadline = 0, 0, time.monotonic() + timeout
    while reported < len(processes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(processes) - reported} client processes never got ready")
        try:
            _, count = await asyncio.to_thread(ready.get, True, 0.5)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"a client process exited with {dead[0].exitcode}") from None
            continue
        total += count
        reported += 1
    return total


async def collect(results: Queue[Any], processes: list[SpawnProcess], timeout: float) -> list[Any]:
    collected: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(collected) < len(processes) and time.monotonic() < deadline:
        try:
            collected.append(await asyncio.to_thread(results.get, True, 0.5))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                break
    return collected


def stop(processes: list[SpawnProcess]) -> None:
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


def latency_part(
    hub: str,
    transports: Sequence[str],
    database_url: str,
    redis_url: str | None,
    settings: LatencySettings,
    logs: Path,
) -> tuple[list[LatencyOutcome], int]:
    """Servers A and B on a fresh schema; per transport, readers on B then on A. The outcomes,
    and the number of error or warning lines in the servers' logs."""
    reset_schema(database_url)
    outcomes: list[LatencyOutcome] = []
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(runstream_server("A", database_url, redis_url, 1, logs))
        b = stack.enter_context(runstream_server("B", database_url, redis_url, 1, logs))
        for transport in transports:
            for placement, reader_server in (("B", b), ("A", a)):
                outcome = LatencyOutcome(hub, transport, placement, settings.readers)
                asyncio.run(measure_latency(outcome, a, reader_server, settings))
                print(latency_line(outcome), flush=True)
                for note in outcome.notes:
                    print(f"    note: {note}", flush=True)
                outcomes.append(outcome)
        bad = any(o.broken or not o.complete for o in outcomes)
        problems, notes = log_notes((a, b), show_tail=bad)
    for note in notes:
        print(f"    note: {note}", flush=True)
    return outcomes, problems


LATENCY_COLUMNS = (
    f"{'hub':<8} {'via':<4} {'readers':>10} {'delivered/expected':>21} {'dup':>4} {'ooo':>4} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
)


def latency_line(outcome: LatencyOutcome) -> str:
    where = f"{outcome.readers} on {outcome.placement}"
    delivered = f"{outcome.delivered}/{outcome.expected}"
    figures = [f"{value:8.2f}" for value in outcome.latency or ()] or [f"{'-':>8}"] * 3
    return (
        f"{outcome.hub:<8} {outcome.transport:<4} {where:>10} {delivered:>21} "
        f"{outcome.duplicates:>4} {outcome.out_of_order:>4} {' '.join(figures)}"
    )


# -- part 2: throughput, the writers (in client processes) -------------------------------------


@dataclass(frozen=True)
class WriterJob:
    """What one client process does: ``len(paths)`` connections, connection k appending as
    writer ``first_writer + k`` to ``paths[k]`` (created first unless ``create`` is False)."""

    index: int
    port: int
    paths: tuple[str, ...]
    first_writer: int
    create: bool
    seconds: float
    connect_timeout: float


@dataclass
class WriterResult:
    index: int
    sent: dict[int, int] = field(default_factory=dict)  # writer -> appends sent (n 0..sent-1)
    acked: int = 0
    in_window: int = 0  # of them, the acks that came within the T seconds
    failed: set[Key] = field(default_factory=set)  # (writer, n) of the appends that failed
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def writer_process(
    job: WriterJob, ready: Queue[tuple[int, int]], go: Event, results: Queue[Any]
) -> None:
    raise_fd_limit()
    results.put(asyncio.run(run_writers(job, ready, go)))


async def run_writers(job: WriterJob, ready: Queue[tuple[int, int]], go: Event) -> WriterResult:
    result = WriterResult(job.index)
    connections = [Http(job.port) for _ in job.paths]
    try:
        if job.create:
            for http, path in zip(connections, job.paths, strict=True):
                status, _, body = await http.request("PUT", path)
                if status not in (200, 201):
                    raise RuntimeError(f"PUT {path} answered {status}: {body[:200]!r}")
        else:  # connect now: the connections' setup stays out of the window
            for http in connections:
                await http.request("GET", "/healthz")
        ready.put((job.index, len(connections)))
        await asyncio.to_thread(wait_go, go, job.connect_timeout + 60)
        cpu_start = sum(os.times()[:2])
        deadline = time.monotonic() + job.seconds
        await asyncio.gather(
            *(
                append_until(http, path, job.first_writer + k, deadline, result)
                for k, (http, path) in enumerate(zip(connections, job.paths, strict=True))
            )
        )
        result.cpu_seconds = sum(os.times()[:2]) - cpu_start
    except Exception as error:
        result.errors.append(f"{type(error).__name__}: {error}")
    finally:
        for http in connections:
            await http.close()
    return result


async def append_until(
    http: Http, path: str, writer: int, deadline: float, result: WriterResult
) -> None:
    """Append one message at a time until ``deadline``; an append that fails is counted (its
    message may or may not be stored) and the next goes on a new connection."""
    n = 0
    while (sent := time.monotonic()) < deadline:
        body = b"[" + make_chunk(f'"w":{writer},"n":{n}') + b"]"
        try:
            status, _, answer = await http.request("POST", path, body)
        except (OSError, asyncio.IncompleteReadError) as error:
            status, answer = 0, str(error).encode()
        now = time.monotonic()
        if status == 204:
            result.acked += 1
            result.in_window += now <= deadline
            result.latencies_ms.append((now - sent) * 1000)
        else:
            result.failed.add((writer, n))
            if len(result.errors) < 20:
                result.errors.append(f"append answered {status}: {answer[:120]!r}")
            if status == 0:
                await asyncio.sleep(0.01)
        n += 1
        result.sent[writer] = n


# -- part 2: throughput, one scenario ----------------------------------------------------------


@dataclass
class ThroughputOutcome:
    workers: int
    streams: str  # "own" (one per writer) or "shared"
    writers: int
    seconds: float
    appends_per_second: float | None = None
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    failed: int = 0
    latency: tuple[float, float, float] | None = None
    server_cpu_percent: float | None = None
    postgres_cpu_percent: float | None = None
    client_cpu_percent: float | None = None
    machine_cpu_percent: float | None = None  # of all its cores, whoever used it
    notes: list[str] = field(default_factory=list)
    broken: bool = False
    skipped: bool = False

    @property
    def corrupt(self) -> bool:
        return bool(self.lost or self.duplicates or self.out_of_order)


@dataclass(frozen=True)
class ThroughputSettings:
    writers: int
    seconds: float
    client_processes: int
    shared: bool


async def measure_throughput(
    outcome: ThroughputOutcome, server: Server, postmaster: int | None, s: ThroughputSettings
) -> None:
    import httpx

    prefix = f"/v1/stream/bench/scale/{uuid.uuid4().hex[:12]}"
    if outcome.streams == "shared":
        paths = [f"{prefix}/shared"] * s.writers
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.put(paths[0], headers={"Content-Type": "application/json"})
            response.raise_for_status()
    else:
        paths = [f"{prefix}/w{k}" for k in range(s.writers)]
    context = multiprocessing.get_context("spawn")
    ready: Queue[tuple[int, int]] = context.Queue()
    results: Queue[Any] = context.Queue()
    go = context.Event()
    processes: list[SpawnProcess] = []
    collected: list[WriterResult] = []
    first = 0
    try:
        for index, share in enumerate(split(s.writers, s.client_processes)):
            job = WriterJob(
                index,
                server.port,
                tuple(paths[first : first + share]),
                first,
                outcome.streams != "shared",
                s.seconds,
                30.0,
            )
            first += share
            process = context.Process(target=writer_process, args=(job, ready, go, results))
            process.start()
            processes.append(process)
        await wait_ready(ready, processes, 90)
        started = time.monotonic()
        server_before = tree_cpu(server.process.pid)
        machine_before = machine_ticks()
        postgres_before = tree_cpu(postmaster) if postmaster else {}
        go.set()
        collected = await collect(results, processes, s.seconds + 60)
        server_cpu = cpu_since(server.process.pid, server_before)
        postgres_cpu = cpu_since(postmaster, postgres_before) if postmaster else None
        elapsed = time.monotonic() - started
        outcome.machine_cpu_percent = machine_busy(machine_before)
    except Exception as error:
        outcome.broken = True
        outcome.notes.append(f"the scenario failed: {type(error).__name__}: {error}")
        return
    finally:
        go.set()
        stop(processes)
    if len(collected) < len(processes) or any(p.exitcode != 0 for p in processes):
        outcome.broken = True
        outcome.notes.append(
            f"{len(processes) - len(collected)} client processes gave no result "
            f"(exit codes {[p.exitcode for p in processes]})"
        )
    sent: dict[int, int] = {}
    failed: set[Key] = set()
    latencies: array[float] = array("d")
    errors: list[str] = []
    in_window = 0
    client_cpu = 0.0
    for result in collected:
        sent.update(result.sent)
        failed |= result.failed
        outcome.acked += result.acked
        in_window += result.in_window
        latencies.extend(result.latencies_ms)
        client_cpu += result.cpu_seconds
        errors.extend(result.errors)
    if errors:
        outcome.notes.append(f"{len(errors)} errors, e.g. {'; '.join(sorted(set(errors))[:3])}")
        outcome.broken |= any(not r.acked for r in collected)
    outcome.failed = len(failed)
    outcome.appends_per_second = in_window / s.seconds
    outcome.latency = summary(latencies)
    outcome.server_cpu_percent = 100 * server_cpu / elapsed
    if postgres_cpu is not None:
        outcome.postgres_cpu_percent = 100 * postgres_cpu / elapsed
    outcome.client_cpu_percent = 100 * client_cpu / s.seconds
    await asyncio.to_thread(verify, outcome, server.url, sorted(set(paths)), sent, failed)


def verify(
    outcome: ThroughputOutcome, url: str, paths: list[str], sent: dict[int, int], failed: set[Key]
) -> None:
    """Read every stream back from its start: each writer's acknowledged messages must be
    there, once each, in its order; a failed append's message may or may not be."""
    import httpx

    stored: dict[int, list[int]] = collections.defaultdict(list)
    with httpx.Client(base_url=url, timeout=60) as client:
        for path in paths:
            offset = "-1"
            while True:
                response = client.get(path, params={"offset": offset})
                response.raise_for_status()
                for message in response.json():
                    stored[message["w"]].append(message["n"])
                offset = response.headers["Stream-Next-Offset"]
                if response.headers.get("Stream-Up-To-Date") == "true":
                    break
    for writer, numbers in stored.items():
        outcome.stored += len(numbers)
        outcome.duplicates += len(numbers) - len(set(numbers))
        outcome.duplicates += sum(not 0 <= n < sent.get(writer, 0) for n in set(numbers))
        outcome.out_of_order += sum(b < a for a, b in itertools.pairwise(numbers))
    for writer, count in sent.items():
        there = set(stored.get(writer, ()))
        outcome.lost += sum(n not in there and (writer, n) not in failed for n in range(count))


def throughput_part(
    worker_counts: Sequence[int],
    database_url: str,
    redis_url: str | None,
    settings: ThroughputSettings,
    logs: Path,
) -> tuple[list[ThroughputOutcome], int]:
    """Per worker count, a server on a fresh schema: W writers on streams of their own, then
    (if ``settings.shared``) on one shared stream."""
    outcomes: list[ThroughputOutcome] = []
    problems = 0
    kinds = ["own", "shared"] if settings.shared else ["own"]
    for workers in worker_counts:
        reset_schema(database_url)
        postmaster = postmaster_pid(database_url)
        try:
            with runstream_server(f"w{workers}", database_url, redis_url, workers, logs) as server:
                batch = []
                for kind in kinds:
                    outcome = ThroughputOutcome(workers, kind, settings.writers, settings.seconds)
                    asyncio.run(measure_throughput(outcome, server, postmaster, settings))
                    print(throughput_line(outcome), flush=True)
                    for note in outcome.notes:
                        print(f"    note: {note}", flush=True)
                    batch.append(outcome)
                bad = any(o.broken or o.corrupt for o in batch)
                count, notes = log_notes([server], show_tail=bad)
                problems += count
                for note in notes:
                    print(f"    note: {note}", flush=True)
                outcomes.extend(batch)
        except ServerRefused as error:
            outcome = ThroughputOutcome(workers, "-", settings.writers, settings.seconds)
            outcome.skipped = True
            outcome.notes.append(str(error))
            print(throughput_line(outcome))
            print(f"    note: skipped: {error}", flush=True)
            outcomes.append(outcome)
    return outcomes, problems


THROUGHPUT_COLUMNS = (
    f"{'procs':>5} {'streams':<7} {'writers':>7} {'appends/s':>10} {'acked':>8} {'stored':>8} "
    f"{'lost':>4} {'dup':>4} {'ooo':>4} {'p50 ms':>7} {'p99 ms':>7} {'srv CPU%':>8} "
    f"{'pg CPU%':>7} {'cli CPU%':>8} {'box CPU%':>8}"
)


def throughput_line(o: ThroughputOutcome) -> str:
    def number(value: float | None, width: int, digits: int = 0) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    p50, p99 = (o.latency[0], o.latency[1]) if o.latency else (None, None)
    return (
        f"{o.workers:>5} {o.streams:<7} {o.writers:>7} {number(o.appends_per_second, 10)} "
        f"{o.acked:>8} {o.stored:>8} {o.lost:>4} {o.duplicates:>4} {o.out_of_order:>4} "
        f"{number(p50, 7, 1)} {number(p99, 7, 1)} {number(o.server_cpu_percent, 8)} "
        f"{number(o.postgres_cpu_percent, 7)} {number(o.client_cpu_percent, 8)} "
        f"{number(o.machine_cpu_percent, 8)}"
    )


# -- the report and main -----------------------------------------------------------------------


def report(latencies: list[LatencyOutcome], throughputs: list[ThroughputOutcome]) -> None:
    cores = os.cpu_count()
    if latencies:
        print(f"\nsummary: append -> delivery at {RATE} chunks/s ({cores} CPUs)")
        print(LATENCY_COLUMNS)
        for outcome in latencies:
            print(latency_line(outcome))
        for o in latencies:
            if o.placement != "B":
                continue
            p99 = o.latency[1] if o.latency else None
            met = p99 is not None and p99 <= TARGET_P99_MS and o.complete
            shown = "-" if p99 is None else f"{p99:.2f} ms"
            caveat = "" if o.complete else f", and only {o.delivered}/{o.expected} delivered"
            print(
                f"  target {o.hub}/{o.transport}: cross-process p99 <= {TARGET_P99_MS:g} ms: "
                f"{shown}{caveat}: {'met' if met else 'NOT met'}"
            )
    if throughputs:
        print(f"\nsummary: append throughput on PostgreSQL ({cores} CPUs)")
        print(THROUGHPUT_COLUMNS)
        for t in throughputs:
            print(throughput_line(t))
        for kind in ("own", "shared"):
            rate = {
                t.workers: t.appends_per_second
                for t in throughputs
                if t.streams == kind and t.appends_per_second and not t.skipped
            }
            if 1 in rate and 4 in rate:
                ratio = rate[4] / rate[1]
                verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
                target = (
                    f"target >= {TARGET_RATIO:g} x: {verdict}" if kind == "own" else "no target"
                )
                print(
                    f"  {kind} streams: 4 processes {rate[4]:.0f}/s, 1 process {rate[1]:.0f}/s: "
                    f"x{ratio:.2f} ({target}; {cores} CPUs shared by clients, servers and "
                    "PostgreSQL)"
                )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="10 readers, 3 s per scenario: a CI check (< 60 s)"
    )
    parser.add_argument("--parts", default="latency,throughput", help="of latency, throughput")
    parser.add_argument(
        "--hub", choices=(*HUBS, "both"), default="redis", help="what carries commits across"
    )
    parser.add_argument("--transports", default="sse", help="the readers': of sse, ws")
    parser.add_argument("--readers", type=int, default=100, help="live readers (latency)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per scenario")
    parser.add_argument("--writers", type=int, default=64, help="writers (throughput)")
    parser.add_argument("--client-processes", type=int, default=4, help="per scenario")
    parser.add_argument(
        "--no-shared", dest="shared", action="store_false", help="skip the shared-stream run"
    )
    parser.add_argument("--workers", default="1,4", help="server processes (throughput)")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a PostgreSQL database of its own: its Runstream tables are dropped",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if args.smoke:
        args.readers, args.seconds = 10, 3.0
    args.part_list = [part for part in args.parts.split(",") if part]
    args.transport_list = [part for part in args.transports.split(",") if part]
    args.worker_counts = [int(part) for part in args.workers.split(",") if part]
    args.hub_list = list(HUBS) if args.hub == "both" else [args.hub]
    if set(args.part_list) - {"latency", "throughput"}:
        parser.error(f"unknown parts in {args.parts!r}")
    if set(args.transport_list) - set(TRANSPORTS):
        parser.error(f"unknown transports in {args.transports!r}")
    return args


def main() -> int:
    args = parse_arguments()
    raise_fd_limit()
    problem = postgres_problem(args.database_url)
    if problem:
        print(f"PostgreSQL is unreachable ({args.database_url}): {problem}; nothing to measure")
        return 2 if args.smoke else 0
    hubs = list(args.hub_list)
    redis_down = redis_problem(args.redis_url) if "redis" in hubs else None
    if redis_down:
        print(f"Redis is unreachable ({args.redis_url}): {redis_down}; the Redis hub is skipped")
        if args.smoke:
            return 2
        hubs.remove("redis")
    print(
        f"scale-out: {os.cpu_count()} CPUs, {args.seconds:g} s per scenario, hubs "
        f"{','.join(hubs) or '-'}, database {args.database_url}"
    )
    logs = Path(tempfile.mkdtemp(prefix="scale-logs-"))
    latencies: list[LatencyOutcome] = []
    throughputs: list[ThroughputOutcome] = []
    problems = 0
    failed = False
    try:
        if "latency" in args.part_list and hubs:
            settings = LatencySettings(
                readers=args.readers,
                seconds=args.seconds,
                client_processes=min(2, args.client_processes),
                connect_timeout=10.0 if args.smoke else 60.0,
                drain_seconds=5.0 if args.smoke else 10.0,
            )
            print(
                f"\nappend -> delivery: 1 writer at {RATE} chunks/s through A, "
                f"{args.readers} readers on B, then on A"
            )
            print(LATENCY_COLUMNS)
            for hub in hubs:
                redis_url = args.redis_url if hub == "redis" else None
                try:
                    outcomes, count = latency_part(
                        hub, args.transport_list, args.database_url, redis_url, settings, logs
                    )
                except RuntimeError as error:  # a server did not start
                    print(f"    note: the {hub} hub's servers failed: {error}")
                    failed = True
                    continue
                latencies.extend(outcomes)
                problems += count
        if "throughput" in args.part_list and hubs:
            hub = hubs[0]
            settings_t = ThroughputSettings(
                args.writers, args.seconds, max(1, args.client_processes), args.shared
            )
            print(
                f"\nappend throughput ({hub} hub): {args.writers} writers in "
                f"{settings_t.client_processes} client processes, {args.seconds:g} s each"
            )
            print(THROUGHPUT_COLUMNS)
            outcomes_t, count = throughput_part(
                args.worker_counts,
                args.database_url,
                args.redis_url if hub == "redis" else None,
                settings_t,
                logs,
            )
            throughputs.extend(outcomes_t)
            problems += count
    finally:
        keep = problems or failed or any(o.broken or not o.complete for o in latencies)
        keep = keep or any(t.broken or t.corrupt for t in throughputs)
        if keep:
            print(f"\nthe server logs are kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    report(latencies, throughputs)
    failed |= any(o.broken or o.corrupt or (args.smoke and not o.complete) for o in latencies)
    failed |= any(t.broken or t.corrupt for t in throughputs)
    if failed:
        print("\nFAILED: the benchmark broke, or a chunk was lost, repeated or reordered")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
