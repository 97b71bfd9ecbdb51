"""What the live-path benchmarks measure delivery with (bench/fanout.py, bench/delivery.py):
messages that carry their send time, paced writers, and readers that follow streams live from
client processes of their own, over websockets, Durable Streams SSE and long-poll, a plain SSE
relay, or Redis streams.

The readers run in separate processes (spawned), each an asyncio loop holding its share of them:
on a small machine a thousand readers' parsing does not fit in the measuring process's loop
beside the writer, and the figures would be the harness's. Each reader talks HTTP/1.1 over a
raw socket, which costs a reader far less CPU than an HTTP client library, so that more of what
is measured is the server's.

Every reader keeps a :class:`Tally` of the messages 0..expected-1 it must get, each exactly
once and in order, and the time from each message's send time (its own ``t``) to its arrival.
A client process stops by itself: each of its waits has a deadline, and it ends when the process
that started it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import socket
import time
from array import array
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from types import TracebackType
from typing import Any

from procstat import raise_fd_limit

HOST = "127.0.0.1"
REDIS_PORT = 6379
CHUNK_BYTES = 100
CONNECTS_AT_ONCE = 50  # per client process: connection attempts in flight at once
RESULT_WAIT = 60.0  # past the readers' drain: how long their processes may take to report


def make_chunk(n: int) -> str:
    """About CHUNK_BYTES of JSON carrying its number and its send time."""
    chunk = json.dumps({"t": time.time(), "n": n, "pad": ""})
    return chunk[:-2] + "x" * max(0, CHUNK_BYTES - len(chunk)) + '"}'


def live_room(readers: int) -> int:
    """The live readers a server is given room for when ``readers`` follow it: each of them
    twice (an SSE response the server ends and its reconnection overlap for a moment), and a
    margin."""
    return 2 * readers + 64


# -- what a reader got -------------------------------------------------------------------------


@dataclass
class Tally:
    """What one reader received, checked against the messages 0..expected-1 it must get."""

    expected: int
    seen: bytearray = field(init=False)
    highest: int = -1
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    last_received: float = 0.0  # time.time() of the last new message
    live: bool = False  # connected and at the tail
    reconnects: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.seen = bytearray(self.expected)

    def add(self, chunk: dict[str, Any], received_at: float) -> None:
        n = chunk.get("n")
        if not isinstance(n, int):
            return  # a priming message
        if not 0 <= n < self.expected or self.seen[n]:
            self.duplicates += 1
            return
        self.seen[n] = 1
        self.delivered += 1
        if n < self.highest:
            self.out_of_order += 1  # it came after a later message
        self.highest = max(self.highest, n)
        self.latencies_ms.append((received_at - chunk["t"]) * 1000)
        self.last_received = received_at

    @property
    def done(self) -> bool:
        return self.delivered == self.expected


@dataclass
class ProcessResult:
    """The tallies of one client process (or of several, :func:`merged`), summed."""

    index: int
    connected: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    reconnects: int = 0
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    last_received: float = 0.0
    cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def merged(results: Sequence[ProcessResult]) -> ProcessResult:
    """The results of every client process of a measurement, as one."""
    total = ProcessResult(-1)
    for result in results:
        total.connected += result.connected
        total.delivered += result.delivered
        total.duplicates += result.duplicates
        total.out_of_order += result.out_of_order
        total.reconnects += result.reconnects
        total.latencies_ms.extend(result.latencies_ms)
        total.last_received = max(total.last_received, result.last_received)
        total.cpu_seconds += result.cpu_seconds
        total.errors.extend(result.errors)
    return total


# -- the client processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one client process does: follow each of ``streams`` with a reader of its own (a
    stream named twice has two readers), each of which must get messages 0..expected-1."""

    index: int
    transport: str  # a key of FOLLOWERS
    port: int
    streams: tuple[str, ...]  # a URL path each (a Redis key for "redis")
    expected: int
    connect_timeout: float  # for every reader to be connected and live
    drain_seconds: float  # after the writer's last message, for the readers to get the rest
    ws_compression: str | None = None


@dataclass(frozen=True)
class Signals:
    """How a client process and the process that started it talk: the client says how many of
    its readers are live (``ready``), is told that the writer starts (``go``) and that it is
    done (``written``), and puts its :class:`ProcessResult` (``results``)."""

    ready: Queue[tuple[int, int]]
    go: Event
    written: Event
    results: Queue[ProcessResult]


def jobs_for(
    transport: str,
    port: int,
    streams: Sequence[str],
    expected: int,
    processes: int,
    **settings: Any,
) -> list[Job]:
    """The readers of ``streams`` (one each) shared out over at most ``processes`` client
    processes, none of them empty; ``settings`` are the rest of each :class:`Job`."""
    parts = max(1, min(processes, len(streams)))
    size, extra = divmod(len(streams), parts)
    shares, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        shares.append(Job(part, transport, port, tuple(streams[start:end]), expected, **settings))
        start = end
    return shares


class ClientProcesses:
    """The client processes of one measurement, started by :meth:`start` and stopped on the way
    out of its ``with`` block (each also stops by itself: see the module's docstring)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        context = multiprocessing.get_context("spawn")
        self.signals = Signals(context.Queue(), context.Event(), context.Event(), context.Queue())
        self.drain_seconds = max((job.drain_seconds for job in jobs), default=0.0)
        self.processes: list[SpawnProcess] = [
            context.Process(target=client_process, args=(job, self.signals)) for job in jobs
        ]

    def __enter__(self) -> ClientProcesses:
        return self

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.signals.go.set()
        self.signals.written.set()
        for process in self.processes:
            if process.pid is None:
                continue  # never started
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)

    async def wait_live(self, timeout: float) -> int:
        """How many readers are live, once every client process has said so."""
        live, reported, deadline = 0, 0, time.monotonic() + timeout
        while reported < len(self.processes):
            if time.monotonic() > deadline:
                missing = len(self.processes) - reported
                raise RuntimeError(f"{missing} client processes never got ready")
            try:
                _, count = await asyncio.to_thread(self.signals.ready.get, True, 0.5)
            except queue.Empty:
                dead = [p for p in self.processes if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"a client process exited with {dead[0].exitcode}") from None
                continue
            live += count
            reported += 1
        return live

    def go(self) -> None:
        self.signals.go.set()

    def written(self) -> None:
        """The writer has sent its last message (or given up): the readers have
        ``drain_seconds`` more."""
        self.signals.go.set()
        self.signals.written.set()

    async def collect(self) -> list[ProcessResult]:
        """Every client process's result, once the writer is done (:meth:`written`): those
        that came by the readers' drain and RESULT_WAIT (a process that crashed gives none: see
        :meth:`failures`)."""
        collected: list[ProcessResult] = []
        started = sum(process.pid is not None for process in self.processes)
        deadline = time.monotonic() + self.drain_seconds + RESULT_WAIT
        while len(collected) < started and time.monotonic() < deadline:
            try:
                collected.append(await asyncio.to_thread(self.signals.results.get, True, 0.5))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in self.processes):
                    break
        return collected

    def failures(self, collected: Sequence[ProcessResult]) -> str | None:
        """What went wrong with the client processes themselves, or None."""
        codes = [p.exitcode for p in self.processes]
        if len(collected) < len(self.processes) or any(code not in (None, 0) for code in codes):
            return (
                f"{len(self.processes) - len(collected)} of {len(self.processes)} client "
                f"processes gave no result (exit codes {codes})"
            )
        return None


def client_process(job: Job, signals: Signals) -> None:
    """A client process: hold ``job``'s readers, report when they are live, then follow the
    streams until each reader has every message or the time is up; put the summed tallies."""
    raise_fd_limit()
    signals.results.put(asyncio.run(run_readers(job, signals)))


def parent_alive() -> bool:
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


async def run_readers(job: Job, signals: Signals) -> ProcessResult:
    follow = FOLLOWERS[job.transport]
    tallies = [Tally(job.expected) for _ in job.streams]
    all_live = asyncio.Event()
    connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)

    def on_live(tally: Tally) -> None:
        if not tally.live:
            tally.live = True
            if all(t.live for t in tallies):
                all_live.set()

    async def reader(stream: str, tally: Tally) -> None:
        try:
            await follow(job, stream, tally, connecting, lambda: on_live(tally))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            tally.error = f"{type(error).__name__}: {error}"

    tasks = [asyncio.create_task(reader(s, t)) for s, t in zip(job.streams, tallies, strict=True)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_live.wait(), job.connect_timeout)
    signals.ready.put((job.index, sum(t.live for t in tallies)))
    go_deadline = time.monotonic() + job.connect_timeout + 60
    while not signals.go.is_set() and time.monotonic() < go_deadline and parent_alive():
        await asyncio.sleep(0.005)
    cpu_start = sum(os.times()[:2])
    everyone = asyncio.gather(*tasks, return_exceptions=True)
    written_at: float | None = None
    # Until every reader is done, the writer finished drain_seconds ago, or the parent is gone.
    while not everyone.done() and parent_alive():
        if written_at is None and signals.written.is_set():
            written_at = time.monotonic()
        if written_at is not None and time.monotonic() - written_at > job.drain_seconds:
            break
        await asyncio.wait([everyone], timeout=0.1)
    for task in tasks:
        task.cancel()
    await everyone
    return summed(job.index, tallies, sum(os.times()[:2]) - cpu_start)


def summed(index: int, tallies: list[Tally], cpu: float) -> ProcessResult:
    result = ProcessResult(index, cpu_seconds=cpu)
    for tally in tallies:
        result.connected += tally.live
        result.delivered += tally.delivered
        result.duplicates += tally.duplicates
        result.out_of_order += tally.out_of_order
        result.reconnects += tally.reconnects
        result.latencies_ms.extend(tally.latencies_ms)
        result.last_received = max(result.last_received, tally.last_received)
        if tally.error is not None:
            result.errors.append(tally.error)
        elif not tally.done:
            result.errors.append(f"a reader got {tally.delivered} of {tally.expected} messages")
    return result


# -- HTTP/1.1 over a raw socket ----------------------------------------------------------------


async def open_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def close_connection(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def request_bytes(method: str, port: int, target: str, body: bytes | None, accept: str) -> bytes:
    """A request's bytes; a body (even an empty one) goes as JSON, as appends and creates do."""
    head = f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: {accept}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """A response head's status and headers (names in lower case)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers


async def read_body_part(reader: asyncio.StreamReader, chunked: bool) -> bytes:
    """The next piece of a response body: one HTTP chunk, or what has arrived; b"" at its end."""
    if not chunked:
        return await reader.read(1 << 16)
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0], 16)
    if size == 0:
        await reader.readuntil(b"\r\n")  # the end of the (empty) trailer
        return b""
    return (await reader.readexactly(size + 2))[:-2]


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to a server on loopback, opened when first needed and
    again after the server closes it: the least a client can do for a request."""

    def __init__(self, port: int, connecting: asyncio.Semaphore | None = None) -> None:
        self.port = port
        self.connecting = connecting or asyncio.Semaphore(1)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.reopened = 0

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.streams is None:
            async with self.connecting:
                self.streams = await asyncio.wait_for(open_connection(self.port), 60)
        return self.streams

    async def request(self, method: str, target: str, body: bytes | None = None) -> Response:
        """The response to one request. A connection the server has closed while it was idle
        is replaced before the request; a GET it did not answer on a connection it had kept
        alive (it closed it just then) is sent again once on a new one; nothing else is."""
        while True:
            if self.streams is not None and self.streams[0].at_eof():
                await self.close()
                self.reopened += 1
            reused = self.streams is not None
            reader, writer = await self.open()
            writer.write(request_bytes(method, self.port, target, body, "application/json"))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                if not reused or method != "GET":
                    raise
                self.reopened += 1
                continue
            status, headers = parse_head(head)
            if status in (204, 304) or status < 200:
                body_bytes = b""
            elif "content-length" in headers:
                body_bytes = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while part := await read_body_part(reader, True):
                    parts.append(part)
                body_bytes = b"".join(parts)
            else:  # the body lasts until the server closes the connection
                body_bytes = await reader.read()
                headers["connection"] = "close"
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return Response(status, headers, body_bytes)

    async def close(self) -> None:
        if self.streams is not None:
            _, writer = self.streams
            self.streams = None
            await close_connection(writer)


async def sse_events(
    port: int, target: str, connecting: asyncio.Semaphore
) -> AsyncGenerator[tuple[bytes, bytes, float], None]:
    """The events of one SSE response, as they come: each event's type (``message`` unless it
    says), its data (its data lines joined) and the time it arrived. Comments and events
    without data are left out. Use it with :func:`contextlib.aclosing`."""
    async with connecting:
        reader, writer = await asyncio.wait_for(open_connection(port), 60)
    try:
        writer.write(request_bytes("GET", port, target, None, "text/event-stream"))
        status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if status != 200:
            raise RuntimeError(f"SSE read of {target} refused: {status}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        pending = b""
        while data := await read_body_part(reader, chunked):
            received_at = time.time()
            *events, pending = (pending + data).split(b"\n\n")
            for event in events:
                kind, lines = b"message", []
                for line in event.split(b"\n"):
                    name, _, value = line.partition(b":")
                    value = value.removeprefix(b" ")
                    if name == b"event":
                        kind = value
                    elif name == b"data":
                        lines.append(value)
                if lines:
                    yield kind, b"\n".join(lines), received_at
    finally:
        await close_connection(writer)


# -- the followers -----------------------------------------------------------------------------

Follower = Callable[[Job, str, Tally, asyncio.Semaphore, Callable[[], None]], Awaitable[None]]


async def follow_websocket(
    job: Job, stream: str, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """A Runstream websocket reader (``stream`` is its ``/realtime/v2/streams/...`` path) from
    index 0: the priming chunk, which says it is live, then every chunk as it comes."""
    from websockets.asyncio.client import connect

    url = f"ws://{HOST}:{job.port}{stream}?start_index=0&timeout_in_seconds=60"
    async with connecting:
        connection = await connect(
            url, max_size=None, ping_interval=None, compression=job.ws_compression, open_timeout=60
        )
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


async def follow_sse(
    job: Job, stream: str, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """A Durable Streams SSE reader from the tail (offset=now); live at its first control
    event. It resumes from the last control event's offset if the server ends the response."""
    offset = "now"
    while True:
        target = f"{stream}?offset={offset}&live=sse"
        async with contextlib.aclosing(sse_events(job.port, target, connecting)) as events:
            async for kind, data, received_at in events:
                if kind == b"data":
                    for chunk in json.loads(data):
                        tally.add(chunk, received_at)
                elif kind == b"control":
                    offset = json.loads(data)["streamNextOffset"]
                    on_live()
                if tally.done:
                    return
        tally.reconnects += 1


async def follow_long_poll(
    job: Job, stream: str, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """A Durable Streams long-poll reader on one keep-alive connection: a plain read at
    offset=now finds the tail (then it is live), then each long-poll from the last offset,
    echoing the server's cursor, as the protocol asks of clients."""
    connection = HttpConnection(job.port, connecting)
    try:
        response = await connection.request("GET", f"{stream}?offset=now")
        if response.status != 200:
            raise RuntimeError(f"reading {stream} at its tail: {response.status}")
        offset, cursor = response.headers["stream-next-offset"], ""
        on_live()
        while not tally.done:
            target = f"{stream}?offset={offset}&live=long-poll{cursor}"
            response = await connection.request("GET", target)
            received_at = time.time()
            if response.status == 200:
                for chunk in json.loads(response.body):
                    tally.add(chunk, received_at)
            elif response.status != 204:  # 204: it timed out with nothing new
                raise RuntimeError(f"long-poll of {stream}: {response.status}")
            offset = response.headers["stream-next-offset"]
            if "stream-cursor" in response.headers:
                cursor = f"&cursor={response.headers['stream-cursor']}"
    finally:
        tally.reconnects += connection.reopened
        await connection.close()


async def follow_relay(
    job: Job, stream: str, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """A reader of the SSE relay (bench/relay_app.py): live once it says ``subscribed``, then a
    message per event. Pub/sub keeps nothing, so a response that ends cannot be resumed."""
    async with contextlib.aclosing(sse_events(job.port, stream, connecting)) as events:
        async for kind, data, received_at in events:
            if kind == b"subscribed":
                on_live()
            elif kind == b"message":
                tally.add(json.loads(data), received_at)
                if tally.done:
                    return
    raise RuntimeError(f"the relay ended its response after {tally.delivered} messages")


async def follow_redis(
    job: Job, stream: str, tally: Tally, connecting: asyncio.Semaphore, on_live: Callable[[], None]
) -> None:
    """XREAD BLOCK of the Redis stream ``stream`` from its start (its priming entry says the
    reader is live) and then from the last id, on a connection of its own."""
    import redis.asyncio

    client = redis.asyncio.Redis(host=HOST, port=REDIS_PORT)
    try:
        async with connecting:
            await client.ping()
        last: bytes | str = "0-0"
        while not tally.done:
            answer: Any = await client.xread({stream: last}, count=1000, block=5000)
            received_at = time.time()
            for _key, entries in answer or []:
                for entry_id, fields in entries:
                    last = entry_id
                    tally.add(json.loads(fields[b"d"]), received_at)
                on_live()
    finally:
        await client.aclose()


FOLLOWERS: dict[str, Follower] = {
    "ws": follow_websocket,
    "sse": follow_sse,
    "long-poll": follow_long_poll,
    "relay": follow_relay,
    "redis": follow_redis,
}


# -- writing -----------------------------------------------------------------------------------


async def write_paced(
    send: Callable[[int], Awaitable[None]], count: int, rate: float, phase: float = 0.0
) -> float:
    """Send message n at start + (phase + n) / rate, ``phase`` in [0, 1) staggering writers of
    several streams: a late message goes at once, and the schedule holds. The seconds it took."""
    started = time.monotonic()
    for n in range(count):
        delay = started + (phase + n) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(n)
    return time.monotonic() - started


class RedisWriter:
    """XADD to fresh Redis stream keys: a priming entry each, then the paced messages."""

    def __init__(self, keys: Sequence[str]) -> None:
        import redis.asyncio

        self.keys = list(keys)
        self.client = redis.asyncio.Redis(host=HOST, port=REDIS_PORT, max_connections=len(keys))

    async def open(self) -> None:
        for key in self.keys:
            await self.client.xadd(key, {"d": "{}"})

    async def send(self, n: int, stream: int = 0) -> None:
        await self.client.xadd(self.keys[stream], {"d": make_chunk(n)})

    async def finish(self, count: int, timeout: float = 0.0) -> list[str]:
        """Notes on what the streams hold, if it is not every message: the same call as the
        other writers', with nothing to wait for (an entry is there once XADD answered)."""
        notes = []
        for key in self.keys:
            length = await self.client.xlen(key)
            if length != count + 1:
                notes.append(f"the Redis stream {key} holds {length} entries, not {count + 1}")
        return notes

    async def close(self) -> None:
        """Delete the keys, once every reader is done with them."""
        await self.client.delete(*self.keys)
        await self.client.aclose()


# -- Redis, the near-limit line ----------------------------------------------------------------


def redis_reachable() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect((HOST, REDIS_PORT))
        except OSError:
            return False
    return True


async def redis_pids() -> list[int]:
    """redis-server's pid, if it runs in this machine's /proc (else nothing to measure)."""
    import redis.asyncio

    client = redis.asyncio.Redis(host=HOST, port=REDIS_PORT)
    try:
        pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    return [pid] if Path(f"/proc/{pid}/stat").exists() else []
