"""Append → delivery for ``python -m bench``: how long a message POSTed to a stream takes to reach
the live readers of that stream, over SSE and long-poll, Runstream beside its peers.

Scenarios (each a name ``--only`` takes):

- ``sse_delivery``: one stream written at 100 messages/s, followed by 1, 100 and 1,000 SSE
  readers. Systems: Runstream, the Durable Streams reference server, Redis itself (XADD, and
  readers on XREAD BLOCK, one connection each: the near-limit line) and a Flask SSE relay of
  Redis pub/sub under gunicorn's gevent worker (bench/relay_app.py: what a Python user would
  otherwise build).
- ``longpoll_delivery``: the same over Durable Streams long-poll, Runstream and the reference
  server.
- ``many_streams``: 500 streams, each written at 20 messages/s (10,000 a second in all) and
  followed by one SSE reader; all four systems.

How each measurement goes:

- Messages are 100 bytes of JSON carrying their number and their send time. The writer is the
  same for every HTTP system: one keep-alive HTTP/1.1 connection per stream, each message one
  POST of its JSON, answered before the stream's next; it is paced on an absolute schedule
  (message n at start + n/rate, the streams staggered over one period), a late message going at
  once. For Redis it is XADD.
- The readers (bench/live.py) run in two client processes, raw asyncio sockets, and are all
  connected and live at the tail before the writer starts: each must get every message exactly
  once and in order. A reader that misses one, gets one twice or out of order, or cannot connect
  fails the run (``ScenarioFailed``): a lost message is a bug, not a figure.

The figures, each the median of its rounds:

- p50 and p99 latency, over every reader and message of a round: a message's arrival at a
  reader minus its send time (both on this machine's clock), so it includes the POST, and it is
  what the system adds to a message once it has been sent.
- Messages delivered per second, over all readers, from the writer's start to the last
  delivery. A system that cannot keep up with the rate offered shows it here rather than in its
  latencies: its POSTs are answered late, so the writer falls behind its schedule (a note says
  by how much) and sends less. Every reader getting every message, it is the rate offered times
  the readers when the system keeps up.
- Server CPU: the utime and stime of the server's processes (/proc) from the writer's start to
  the last reader's end, as % of one core; the relay's includes redis-server's, which does its
  fan-out, and Redis's is redis-server's (both count whatever else uses that Redis meanwhile).

Runstream is started for each scenario with room for its readers (:func:`live.live_room`); the
reference server is the run's; the relay is started for each scenario that has it and stopped
with it. On 2 cores the readers compete with the servers: at 1,000 readers they want about a
core of their own, and every system's figures there are partly the machine's (the notes give
the readers' CPU). A round of 500 readers or more takes long (a minute or more where a system
falls behind), so it runs once whatever ``--repeat`` says, and 1,000 readers of one stream get
1 s of messages rather than 2; the notes say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from harness import Run, Scenario, ScenarioFailed
from live import (
    REDIS_PORT,
    ClientProcesses,
    HttpConnection,
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
from peers import HOST, Server, gunicorn, runstream_server
from procstat import cpu_seconds, percentile
from results import RUNSTREAM, Measure

REDIS_NAME = "Redis (XADD/XREAD BLOCK)"
RELAY_NAME = "Flask-SSE relay (gunicorn + Redis pub/sub)"
DURABLE, RELAY, REDIS = "Durable Streams", "relay", "Redis"  # how a system is written and read
CLIENT_PROCESSES = 2
CONNECT_TIMEOUT = 60.0
ONE_ROUND_FROM = 500  # readers: a round this big runs once


@dataclass(frozen=True)
class Shape:
    """What a measurement writes and reads: ``streams`` streams, each written at ``rate``
    messages/s for ``seconds`` and followed by ``readers_each`` readers."""

    streams: int
    readers_each: int
    rate: float
    seconds: float

    @property
    def count(self) -> int:
        return round(self.rate * self.seconds)  # messages per stream

    @property
    def readers(self) -> int:
        return self.streams * self.readers_each


@dataclass(frozen=True)
class System:
    """A system a scenario measures: its name in the results, how it is written and read
    (DURABLE, RELAY or REDIS), where, its server process (none for Redis, which the benchmark
    does not start) and other processes whose CPU is its."""

    name: str
    kind: str
    port: int
    server: Server | None
    also_measured: tuple[int, ...] = ()

    def pids(self) -> list[int]:
        return [*(self.server.pids if self.server else []), *self.also_measured]

    def transport(self, live: str) -> str:
        """The readers' follower (bench/live.py) of this system, for ``live`` SSE or long-poll."""
        return {DURABLE: live, RELAY: "relay", REDIS: "redis"}[self.kind]

    def stream_names(self, count: int) -> list[str]:
        tag = uuid.uuid4().hex[:12]
        if self.kind == REDIS:
            return [f"runstream-bench:delivery:{tag}:{n}" for n in range(count)]
        return [f"/v1/stream/bench-delivery/{tag}-{n}" for n in range(count)]


@dataclass
class Round:
    """What one measurement gave."""

    p50: float
    p99: float
    delivered_per_s: float
    server_cpu_percent: float | None
    notes: list[str] = field(default_factory=list)


# -- the writer --------------------------------------------------------------------------------


class HttpWriter:
    """The writer of every HTTP system: one keep-alive connection per stream, each message one
    POST of its JSON. Durable Streams servers get each stream created first (PUT)."""

    def __init__(self, system: System, paths: Sequence[str]) -> None:
        self.system = system
        self.paths = list(paths)
        self.connections = [HttpConnection(system.port) for _ in paths]
        self.post_ms: array[float] = array("d")

    async def open(self) -> None:
        if self.system.kind != DURABLE:
            return  # a relay's channel needs no creating
        for connection, path in zip(self.connections, self.paths, strict=True):
            response = await connection.request("PUT", path, b"")
            if response.status not in (200, 201):
                raise ScenarioFailed(f"creating {path} on {self.system.name}: {response.status}")

    async def send(self, n: int, stream: int = 0) -> None:
        started = time.monotonic()
        path = self.paths[stream]
        response = await self.connections[stream].request("POST", path, make_chunk(n).encode())
        if response.status not in (200, 204):
            raise ScenarioFailed(
                f"appending to {path} on {self.system.name}: {response.status} {response.body!r}"
            )
        self.post_ms.append((time.monotonic() - started) * 1000)

    async def finish(self, count: int) -> list[str]:
        """The writer's own figure, a POST's round trip, as a note: the same call as Redis's
        writer, with nothing to check (each of the ``count`` messages was answered)."""
        ordered = sorted(self.post_ms)
        return [
            f"writer: POST p50 {percentile(ordered, 0.5):.2f} ms, "
            f"p99 {percentile(ordered, 0.99):.2f} ms"
        ]

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


# -- one measurement ---------------------------------------------------------------------------


async def measure(system: System, live: str, shape: Shape, drain_seconds: float) -> Round:
    """One round against one system: streams, readers, the writer, and the figures."""
    names = system.stream_names(shape.streams)
    writer = RedisWriter(names) if system.kind == REDIS else HttpWriter(system, names)
    followed = [name for name in names for _ in range(shape.readers_each)]  # a name per reader
    clients = ClientProcesses(
        jobs_for(
            system.transport(live),
            system.port,
            followed,
            shape.count,
            CLIENT_PROCESSES,
            connect_timeout=CONNECT_TIMEOUT,
            drain_seconds=drain_seconds,
        )
    )
    measured = system.pids()
    try:
        with clients:
            await writer.open()  # before the readers: a Redis reader is live at the first entry
            clients.start()
            held = await clients.wait_live(CONNECT_TIMEOUT + 30)
            if held < shape.readers:
                clients.written()
                total = merged(await clients.collect())
                raise ScenarioFailed(
                    f"{system.name} held {held} of {shape.readers} {live} readers live after "
                    f"{CONNECT_TIMEOUT:g} s: {'; '.join(sorted(set(total.errors))[:3])}"
                    + server_log(system)
                )
            cpu_before, started, wall_started = cpu_seconds(measured), time.monotonic(), time.time()
            clients.go()
            writing = [
                write_paced(
                    functools.partial(writer.send, stream=index),
                    shape.count,
                    shape.rate,
                    phase=index / shape.streams,
                )
                for index in range(shape.streams)
            ]
            wrote_for = max(await asyncio.gather(*writing))
            clients.written()
            collected = await clients.collect()
            elapsed = time.monotonic() - started
            cpu_after = cpu_seconds(measured)
            notes = await writer.finish(shape.count)
    finally:
        with contextlib.suppress(Exception):
            await writer.close()
    total = merged(collected)
    check(system, live, shape, total, clients.failures(collected))
    ordered = array("d", sorted(total.latencies_ms))
    if wrote_for > shape.seconds * 1.1:
        notes.append(f"the writer took {wrote_for:.1f} s for its {shape.seconds:g} s schedule")
    notes.append(f"readers' CPU {100 * total.cpu_seconds / elapsed:.0f}%")
    return Round(
        p50=percentile(ordered, 0.5),
        p99=percentile(ordered, 0.99),
        delivered_per_s=total.delivered / max(total.last_received - wall_started, 1e-9),
        server_cpu_percent=(
            100 * (sum(cpu_after) - sum(cpu_before)) / elapsed if measured else None
        ),
        notes=notes,
    )


def check(
    system: System, live: str, shape: Shape, total: ProcessResult, failure: str | None
) -> None:
    """Raise ScenarioFailed unless every reader got every message once and in order."""
    expected = shape.count * shape.readers
    problems = [failure] if failure else []
    if total.delivered != expected:
        problems.append(f"delivered {total.delivered} of {expected} messages")
    if total.duplicates:
        problems.append(f"{total.duplicates} duplicates")
    if total.out_of_order:
        problems.append(f"{total.out_of_order} out of order")
    if total.errors:
        problems.append(f"readers' errors: {'; '.join(sorted(set(total.errors))[:3])}")
    if problems:
        raise ScenarioFailed(
            f"{live} delivery from {system.name}, {shape.readers} readers of {shape.streams} "
            f"stream(s): {', '.join(problems)}" + server_log(system)
        )


def server_log(system: System) -> str:
    if system.server is None:
        return ""
    return f"\n  its log ({system.server.log}), last lines:\n{system.server.log_tail()}"


# -- the systems -------------------------------------------------------------------------------


def relay_server(logs: Path, connections: int) -> AbstractContextManager[Server]:
    """bench/relay_app.py under gunicorn's gevent worker, holding ``connections`` at once; on
    the way out its SSE responses, which never end by themselves, get 3 s to end, as
    Runstream's do."""
    factory = f"relay_app:create_app({f'redis://{HOST}:{REDIS_PORT}/0'!r}, {connections})"
    return gunicorn(
        RELAY_NAME,
        factory,
        "gevent",
        logs,
        GUNICORN_CMD_ARGS=f"--worker-connections {connections} --graceful-timeout 3",
    )


@contextlib.contextmanager
def systems_of(run: Run, readers: int, streams: int, redis_too: bool) -> Iterator[list[System]]:
    """The systems of a scenario of ``readers`` readers of ``streams`` streams: a Runstream
    started with room for them, the run's peers, and with ``redis_too`` Redis and the relay
    (left out, saying why, if Redis is unreachable)."""
    with ExitStack() as stack:
        runstream = stack.enter_context(
            runstream_server(run.logs, env={"RUNSTREAM_MAX_LIVE_READERS": str(live_room(readers))})
        )
        peers = [server for server in run.servers if not server.name.startswith(RUNSTREAM)]
        systems = [System(s.name, DURABLE, s.port, s) for s in (runstream, *peers)]
        if redis_too and not redis_reachable():
            run.results.skip(f"{REDIS_NAME} and {RELAY_NAME}", f"no Redis at {HOST}:{REDIS_PORT}")
        elif redis_too:
            redis_server = tuple(asyncio.run(redis_pids()))
            systems.append(System(REDIS_NAME, REDIS, REDIS_PORT, None, redis_server))
            relay = stack.enter_context(relay_server(run.logs, live_room(readers) + streams))
            systems.append(System(RELAY_NAME, RELAY, relay.port, relay, redis_server))
        yield systems


# -- the scenarios -----------------------------------------------------------------------------


def title(live: str, shape: Shape) -> str:
    shown = {"sse": "SSE", "long-poll": "long-poll"}[live]
    if shape.streams == 1:
        readers = f"{shape.readers:,} reader" + ("s" if shape.readers > 1 else "")
        return f"{shown}: append → delivery, {shape.rate:g} chunks/s, {readers}"
    return (
        f"{shown}: append → delivery, {shape.streams:,} streams at {shape.rate:g} chunks/s "
        "each, one reader each"
    )


def record(run: Run, live: str, shape: Shape, rounds: list[dict[str, Round]]) -> None:
    """The medians of the rounds' figures, a figure each."""
    scenario = title(live, shape)
    figures = [
        (Measure(scenario, "p50", "ms", False), lambda got: got.p50),
        (Measure(scenario, "p99", "ms", False), lambda got: got.p99),
        (Measure(scenario, "server CPU", "%", False), lambda got: got.server_cpu_percent),
        (Measure(scenario, "delivered", "messages/s", True), lambda got: got.delivered_per_s),
    ]
    for system in rounds[0]:
        got = [each[system] for each in rounds]
        rounds_said = f"median of {len(got)} rounds" if len(got) > 1 else "1 round"
        each = f" of {shape.count} messages a stream"
        note = rounds_said + each + ("; the last: " if len(got) > 1 else "; ")
        note += "; ".join(got[-1].notes)
        for measure, take in figures:
            values = [value for value in map(take, got) if value is not None]
            if values:
                run.results.add(measure, system, statistics.median(values), note)


def scenario(
    run: Run, live: str, shapes: Sequence[Shape], drain_seconds: float, redis_too: bool
) -> None:
    readers = max(shape.readers for shape in shapes)
    streams = max(shape.streams for shape in shapes)
    with systems_of(run, readers, streams, redis_too) as systems:
        for shape in shapes:
            rounds = []
            for round_number in range(1 if shape.readers >= ONE_ROUND_FROM else run.rounds):
                rounds.append(
                    {
                        system.name: asyncio.run(measure(system, live, shape, drain_seconds))
                        for system in run.alternating(systems, round_number)
                    }
                )
            record(run, live, shape, rounds)


def fan_out(run: Run, live: str, redis_too: bool) -> None:
    """One stream at 100 messages/s for 2 s, its readers 1, 100 and 1,000 (smoke: 1 and 10, for
    1 s). 1,000 readers get 1 s (100,000 deliveries, plenty for the percentiles): a system that
    falls behind there takes a minute or more to deliver them."""
    if run.smoke:
        shapes = [Shape(1, readers, 100, 1.0) for readers in (1, 10)]
    else:
        shapes = [Shape(1, 1, 100, 2.0), Shape(1, 100, 100, 2.0), Shape(1, 1000, 100, 1.0)]
    scenario(run, live, shapes, 10.0 if run.smoke else 30.0, redis_too)


def sse_delivery(run: Run) -> None:
    fan_out(run, "sse", redis_too=True)


def longpoll_delivery(run: Run) -> None:
    fan_out(run, "long-poll", redis_too=False)


def many_streams(run: Run) -> None:
    """500 streams (smoke: 20) at 20 messages/s each, an SSE reader each."""
    shape = Shape(20, 1, 20, 1.0) if run.smoke else Shape(500, 1, 20, 2.0)
    scenario(run, "sse", [shape], 10.0 if run.smoke else 60.0, redis_too=True)


DELIVERY_SCENARIOS: list[Scenario] = [
    Scenario("sse_delivery", sse_delivery),
    Scenario("longpoll_delivery", longpoll_delivery),
    Scenario("many_streams", many_streams),
]
