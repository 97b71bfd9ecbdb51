"""A soak: 50 SDK writers and 200 live readers (websocket and SSE mixed) for minutes.

    python bench/soak.py                  # 50 writers, 200 readers, 120 s
    python bench/soak.py --smoke          # 10 writers, 40 readers, 5 s: a CI check that runs
    python bench/soak.py --seconds 20 --writers 50 --readers 200

What it does:
- A fresh ``runstream serve`` (a new SQLite file, or ``--database-url``), its output in a log.
  A warm-up (a short pipe, read back over a websocket and SSE) comes first, so that the baseline
  is that of a server that has served, not of one just started.
- One run with W streams. R readers (R/W per stream, half over websockets
  ``/realtime/v2/streams/...``, half over Durable Streams SSE, which resumes from its last
  offset when the server ends the response) follow the streams from their first chunk to their
  end, from client processes separate from the server (multiprocessing spawn), each an asyncio
  loop holding its share. All are connected before the writers start.
- W SDK writers (``runstream.streams.pipe``, in this process) each pipe ``--rate`` numbered
  chunks a second (a JSON object with its number and send time) for ``--seconds``. Then the run
  is cancelled: the streams end, and each reader must have got every chunk of its stream
  exactly once and in order. Missing, duplicated and out-of-order chunks are counted.
- Latency: a chunk's send time to its arrival at a reader, over all readers and chunks.
- The server's RSS and thread count (of its gunicorn worker, from /proc) at the
  baseline, at their highest while the soak runs, and after the readers left, once the
  server's memory trim (it hands freed memory back when a crowd of readers leaves) has had its
  moment: ``--settle`` seconds at most, sooner if back within bounds.

Figures only, except for what must hold: the exit status is non-zero if any chunk was lost,
duplicated or reordered, a writer or reader failed, or, with ``--check-memory``, the RSS after
is not within 10% + 20 MB of the baseline or the thread count is not back to it. The CI version
(tests/test_soak.py) calls :func:`soak` and asserts the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import percentile, process_tree, raise_fd_limit, status_sum, stop_server

HOST = "127.0.0.1"
SECRET_KEY = "rs_sk_soak-secret-key"
AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}
SERVE = [sys.executable, "-m", "runstream.server", "serve"]
READ_TIMEOUT = 60  # seconds without a chunk after which a reader gives up
CONNECTS_AT_ONCE = 25  # per client process
RSS_SLACK_FRACTION = 0.10
RSS_SLACK_KIB = 20 * 1024


# -- the figures -------------------------------------------------------------------------------


@dataclass
class ReaderResult:
    """What the readers of one client process received, summed, and per stream what each of
    its readers received."""

    process: int
    readers: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    sse_reconnects: int = 0
    # key -> the number of distinct chunks each reader of it received
    received: dict[str, list[int]] = field(default_factory=dict)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)


@dataclass
class Sample:
    rss_kib: int
    threads: int


@dataclass
class SoakResult:
    """The figures of one soak; :attr:`problems` lists what must not happen but did."""

    writers: int
    readers: int
    seconds: float
    written: int = 0
    delivered: int = 0
    expected_deliveries: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    sse_reconnects: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    baseline: Sample = field(default_factory=lambda: Sample(0, 0))
    during: Sample = field(default_factory=lambda: Sample(0, 0))
    after: Sample = field(default_factory=lambda: Sample(0, 0))
    settled_in: float = 0.0
    errors: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)

    @property
    def rss_bound_kib(self) -> int:
        return int(self.baseline.rss_kib * (1 + RSS_SLACK_FRACTION)) + RSS_SLACK_KIB

    @property
    def memory_back(self) -> bool:
        return self.after.rss_kib <= self.rss_bound_kib

    @property
    def threads_back(self) -> bool:
        return self.after.threads <= self.baseline.threads

    @property
    def problems(self) -> list[str]:
        found = list(self.errors)
        for name in ("lost", "duplicates", "out_of_order"):
            if getattr(self, name):
                found.append(f"{getattr(self, name)} chunks {name.replace('_', ' ')}")
        if self.written == 0:
            found.append("nothing was written")
        return found

    def report(self) -> str:
        def mib(kib: int) -> str:
            return f"{kib / 1024:.1f} MiB"

        lines = [
            f"soak: {self.writers} writers, {self.readers} readers "
            f"(websocket and SSE), {self.seconds:g} s",
            f"  chunks written      {self.written}",
            f"  chunks read         {self.delivered} of {self.expected_deliveries} expected",
            f"  lost / dup / reord  {self.lost} / {self.duplicates} / {self.out_of_order}",
            f"  SSE reconnects      {self.sse_reconnects}",
            f"  latency ms          p50 {self.latency_p50_ms:.1f}  p99 {self.latency_p99_ms:.1f}"
            f"  max {self.latency_max_ms:.1f}",
            f"  server RSS          before {mib(self.baseline.rss_kib)}  during (max) "
            f"{mib(self.during.rss_kib)}  after {mib(self.after.rss_kib)} "
            f"(bound {mib(self.rss_bound_kib)}, settled in {self.settled_in:.1f} s)",
            f"  server threads      before {self.baseline.threads}  during (max) "
            f"{self.during.threads}  after {self.after.threads}",
        ]
        lines += [f"  server log: {line}" for line in self.log_problems[:10]]
        lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


# -- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        """The gunicorn worker (and anything it started): the arbiter only watches it."""
        tree = process_tree(self.process.pid)
        return tree[1:] or tree

    def sample(self) -> Sample:
        pids = self.pids()
        return Sample(status_sum(pids, "VmRSS"), status_sum(pids, "Threads"))

    def log_problems(self) -> list[str]:
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if "[ERROR]" in line or "[CRITICAL]" in line or "Traceback" in line
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def runstream_server(instance: Path, database_url: str = "") -> Iterator[Server]:
    """``runstream serve`` on ``instance`` (and ``database_url`` if given), stopped after."""
    import httpx

    port = free_port()
    log = instance / "server.log"
    env = {
        **os.environ,
        "RUNSTREAM_INSTANCE_PATH": str(instance),
        "RUNSTREAM_SECRET_KEY": SECRET_KEY,
    }
    if database_url:
        env["RUNSTREAM_DATABASE_URL"] = database_url
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://{HOST}:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{log.read_text()[-3000:]}")
            try:
                httpx.head(f"{server.url}/v1/stream/__health__", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not answer within 30 s") from None
                time.sleep(0.05)
        yield server
    finally:
        stop_server(process)


def queued_run(url: str, keys: list[str]) -> str:
    """A run that stays queued (no worker serves its task), with its streams created."""
    import httpx

    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        triggered = client.post("/api/v1/tasks/soak/trigger", json={"payload": None})
        triggered.raise_for_status()
        run_id: str = triggered.json()["id"]
        for key in keys:
            created = client.put(
                f"/v1/stream/runs/{run_id}/{key}", headers={"Content-Type": "application/json"}
            )
            created.raise_for_status()
    return run_id


def end_run(url: str, run_id: str) -> None:
    """Cancel the run: its streams close once their writers are done."""
    import httpx

    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        client.post(f"/api/v1/runs/{run_id}/cancel").raise_for_status()


# -- the readers (in client processes) ---------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one client process does: read each of ``readers`` (stream key, transport)."""

    index: int
    url: str
    run_id: str
    readers: tuple[tuple[str, str], ...]


class Tally:
    """One reader's chunks, checked as they come against 0, 1, 2, ..."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.next = 0
        self.delivered = self.duplicates = self.out_of_order = self.reconnects = 0
        self.latencies_ms: array[float] = array("d")
        self.error: str | None = None

    def add(self, chunk: dict[str, Any], received_at: float) -> None:
        self.delivered += 1
        n = chunk["n"]
        if n < self.next:
            self.duplicates += 1
            return
        if n > self.next:
            self.out_of_order += 1
        self.next = n + 1
        self.latencies_ms.append((received_at - chunk["t"]) * 1000)


def client_process(job: Job, ready: Queue[int], go: Event, results: Queue[ReaderResult]) -> None:
    """A client process: connect every reader, say so, then read until every stream ended."""
    raise_fd_limit()
    results.put(asyncio.run(run_readers(job, ready, go)))


async def run_readers(job: Job, ready: Queue[int], go: Event) -> ReaderResult:
    connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)
    tallies = [Tally(key) for key, _ in job.readers]
    live = [asyncio.Event() for _ in tallies]
    follow = {"ws": follow_websocket, "sse": follow_sse}

    async def reader(number: int, transport: str) -> None:
        tally = tallies[number]
        try:
            await follow[transport](job, tally, connecting, live[number])
        except Exception as error:
            tally.error = f"{transport} reader of {tally.key}: {type(error).__name__}: {error}"
        live[number].set()

    tasks = [
        asyncio.create_task(reader(number, transport))
        for number, (_, transport) in enumerate(job.readers)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in live)), 120)
    ready.put(job.index)
    await asyncio.gather(*tasks)
    result = ReaderResult(job.index, readers=len(tallies))
    for tally in tallies:
        result.delivered += tally.delivered
        result.duplicates += tally.duplicates
        result.out_of_order += tally.out_of_order
        result.sse_reconnects += tally.reconnects
        result.received.setdefault(tally.key, []).append(tally.delivered - tally.duplicates)
        result.latencies_ms.extend(tally.latencies_ms)
        if tally.error:
            result.errors.append(tally.error)
    return result


async def follow_websocket(
    job: Job, tally: Tally, connecting: asyncio.Semaphore, live: asyncio.Event
) -> None:
    """A websocket reader of a run stream from chunk 0 until its end frame."""
    from websockets.asyncio.client import connect

    url = (
        f"ws{job.url.removeprefix('http')}/realtime/v2/streams/{job.run_id}/{tally.key}"
        f"?start_index=0&timeout_in_seconds={READ_TIMEOUT}"
    )
    async with connecting:
        connection = await connect(url, additional_headers=AUTH, max_size=None, open_timeout=60)
    live.set()
    async with connection:
        async for text in connection:
            frame = json.loads(text)
            if frame["type"] == "end":
                return
            if frame["type"] == "chunks":
                received_at = time.time()
                for chunk in frame["chunks"]:
                    tally.add(chunk, received_at)
    raise RuntimeError("the websocket closed before the end frame")


async def follow_sse(
    job: Job, tally: Tally, connecting: asyncio.Semaphore, live: asyncio.Event
) -> None:
    """An SSE reader of a run stream from its start until a control event says it is closed;
    when the server ends a response (they last a minute at most) it resumes from the offset
    of the last control event."""
    import httpx

    offset = "-1"
    path = f"{job.url}/v1/stream/runs/{job.run_id}/{tally.key}"
    async with httpx.AsyncClient(headers=AUTH, timeout=READ_TIMEOUT) as client:
        while True:
            async with connecting:
                response = await client.send(
                    client.build_request("GET", path, params={"offset": offset, "live": "sse"}),
                    stream=True,
                )
            try:
                if response.status_code != 200:
                    raise RuntimeError(f"SSE read answered {response.status_code}")
                live.set()
                event = None
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:") and event == "data":
                        received_at = time.time()
                        for chunk in json.loads(line.removeprefix("data:")):
                            tally.add(chunk, received_at)
                    elif line.startswith("data:") and event == "control":
                        control = json.loads(line.removeprefix("data:"))
                        offset = control["streamNextOffset"]
                        if control.get("streamClosed"):
                            return
            finally:
                await response.aclose()
            tally.reconnects += 1


# -- the writers -------------------------------------------------------------------------------


async def write_all(url: str, run_id: str, keys: list[str], rate: float, seconds: float) -> int:
    """Each key's SDK writer pipes ``rate`` chunks a second for ``seconds``; how many in all."""
    from runstream import configure, streams

    configure(api_url=url, secret_key=SECRET_KEY)
    written = [0] * len(keys)

    async def numbered(index: int) -> AsyncIterator[dict[str, Any]]:
        started = time.monotonic() + index / len(keys) / rate  # spread over the first period
        count = int(seconds * rate)
        for n in range(count):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            written[index] += 1
            yield {"n": n, "t": time.time()}

    pipes = [streams.pipe(key, numbered(index), target=run_id) for index, key in enumerate(keys)]
    await asyncio.gather(*(piped.wait_until_complete() for piped in pipes))
    return sum(written)


def warm_up(url: str) -> None:
    """A short pipe to a run of its own, read back by the SDK and over SSE."""
    import httpx

    from runstream import configure, streams

    run_id = queued_run(url, ["warm"])

    async def pipe() -> None:
        configure(api_url=url, secret_key=SECRET_KEY)
        await streams.pipe(
            "warm", [{"n": n} for n in range(100)], target=run_id
        ).wait_until_complete()
        stream = await streams.read(run_id, "warm", timeout_in_seconds=1)
        assert len([chunk async for chunk in stream]) == 100

    asyncio.run(pipe())
    end_run(url, run_id)  # closed, so that the SSE response ends after the last chunk
    response = httpx.get(
        f"{url}/v1/stream/runs/{run_id}/warm",
        params={"offset": "-1", "live": "sse"},
        headers=AUTH,
        timeout=5,
    )
    response.raise_for_status()


# -- the soak ----------------------------------------------------------------------------------


def soak(
    *,
    seconds: float,
    writers: int = 50,
    readers: int = 200,
    rate: float = 10.0,
    client_processes: int = 2,
    settle: float = 20.0,
    database_url: str = "",
    instance: Path | None = None,
) -> SoakResult:
    """Run one soak and return its figures (see the module's docstring)."""
    result = SoakResult(writers, readers, seconds)
    keys = [f"w{number:02d}" for number in range(writers)]
    assignments = [
        (keys[number % writers], ("ws", "sse")[(number // writers) % 2])
        for number in range(readers)
    ]
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        server = stack.enter_context(runstream_server(instance, database_url))
        warm_up(server.url)
        time.sleep(1.0)
        result.baseline = server.sample()
        run_id = queued_run(server.url, keys)

        context = multiprocessing.get_context("spawn")
        ready: Queue[int] = context.Queue()
        results: Queue[ReaderResult] = context.Queue()
        go = context.Event()
        jobs = [
            Job(index, server.url, run_id, tuple(assignments[index::client_processes]))
            for index in range(client_processes)
        ]
        processes = [
            context.Process(target=client_process, args=(job, ready, go, results), daemon=True)
            for job in jobs
        ]
        for process in processes:
            process.start()
        try:
            for _ in processes:
                ready.get(timeout=150)
            go.set()

            sampling = threading.Event()
            peaks = Sample(0, 0)

            def sample() -> None:
                while not sampling.wait(0.5):
                    now = server.sample()
                    peaks.rss_kib = max(peaks.rss_kib, now.rss_kib)
                    peaks.threads = max(peaks.threads, now.threads)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                result.written = asyncio.run(
                    asyncio.wait_for(
                        write_all(server.url, run_id, keys, rate, seconds), seconds + 120
                    )
                )
            except Exception as error:
                result.errors.append(f"the writers failed: {type(error).__name__}: {error}")
            end_run(server.url, run_id)
            outcomes = [results.get(timeout=READ_TIMEOUT + 60) for _ in processes]
            for process in processes:
                process.join(30)
            sampling.set()
            sampler.join()
            result.during = peaks
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()

        per_key = result.written // writers if writers else 0
        latencies: list[float] = []
        for outcome in outcomes:
            result.delivered += outcome.delivered
            result.duplicates += outcome.duplicates
            result.out_of_order += outcome.out_of_order
            result.sse_reconnects += outcome.sse_reconnects
            result.errors += outcome.errors
            latencies.extend(outcome.latencies_ms)
            for counts in outcome.received.values():
                result.lost += sum(max(0, per_key - count) for count in counts)
        result.expected_deliveries = per_key * readers
        if result.written != per_key * writers:
            result.errors.append(f"the writers wrote {result.written}, not {per_key} each")
        latencies.sort()
        if latencies:
            result.latency_p50_ms = percentile(latencies, 0.5)
            result.latency_p99_ms = percentile(latencies, 0.99)
            result.latency_max_ms = latencies[-1]

        # The readers are gone: give the server's memory trim its moment.
        left = time.monotonic()
        while True:
            result.after = server.sample()
            result.settled_in = time.monotonic() - left
            back = result.memory_back and result.threads_back
            if back or result.settled_in >= settle:
                break
            time.sleep(0.5)
        result.log_problems = server.log_problems()
    return result


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="writing time")
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--readers", type=int, default=200, help="half websocket, half SSE")
    parser.add_argument("--rate", type=float, default=10.0, help="chunks a second per writer")
    parser.add_argument("--client-processes", type=int, default=2, help="processes of readers")
    parser.add_argument("--settle", type=float, default=20.0, help="most seconds for the trim")
    parser.add_argument("--database-url", default="", help="PostgreSQL instead of SQLite")
    parser.add_argument("--check-memory", action="store_true", help="fail if not back to base")
    parser.add_argument("--smoke", action="store_true", help="10 writers, 40 readers, 5 s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.smoke:
        arguments.seconds, arguments.writers, arguments.readers = 5.0, 10, 40
    raise_fd_limit()
    result = soak(
        seconds=arguments.seconds,
        writers=arguments.writers,
        readers=arguments.readers,
        rate=arguments.rate,
        client_processes=arguments.client_processes,
        settle=arguments.settle,
        database_url=arguments.database_url,
    )
    print(result.report())
    failed = bool(result.problems)
    if arguments.check_memory and not (result.memory_back and result.threads_back):
        print("  PROBLEM: memory or threads not back to the baseline")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
