"""Idle connections: how many live readers one server holds, and what each one costs it.

    python bench/connections.py                        # 10,000 websocket, then SSE readers
    python bench/connections.py --kind ws --readers 2000
    python bench/connections.py --smoke                # 200 readers, short: a quick check
    python bench/connections.py --server-cmd "gunicorn -k gevent --worker-connections 20000 \\
        -b 127.0.0.1:{port} 'runstream.server:create_app()'"

What it does, for each kind of reader (websocket, then SSE), on a fresh server:
- Starts one server: ``runstream serve`` with room for R+64 live readers
  (``RUNSTREAM_MAX_LIVE_READERS``), or the ``--server-cmd`` given, whose ``{port}`` is filled
  in; either way on a fresh SQLite instance folder (``RUNSTREAM_INSTANCE_PATH``) with
  ``RUNSTREAM_AUTH=disabled``.
  SSE responses would end every ``RUNSTREAM_SSE_MAX_DURATION`` seconds (60 by default) and make
  their readers reconnect; the server gets ``--sse-max-duration`` (900 s) so that the readers
  stay put while they are measured.
- Triggers a run and writes one chunk to its stream ``idle``; then measures the baseline: the
  server's CPU over an idle window (utime + stime from /proc, as % of one core), its RSS (VmRSS),
  threads (``Threads`` of /proc/<pid>/status) and open descriptors, summed over the server's
  processes (the gunicorn arbiter and its worker); and the latency of normal requests.
- Opens readers in steps (2,000, then R), from client processes that hold them in asyncio over
  raw sockets (a few KiB each): websocket readers of the run stream
  (``/realtime/v2/streams/<run_id>/idle?timeout_in_seconds=600``), SSE readers of the same
  stream (``/v1/stream/runs/<run_id>/idle?offset=now&live=sse``), or (``--kind long-poll``)
  long-poll readers of it, each asking for the tail's offset (``?offset=now``) and then
  long-polling there (``&live=long-poll``) again and again on its connection. A reader counts
  as live once its first frame (the stored chunk), its first control event or its answer to
  ``offset=now`` has arrived. Every attempt has
  a timeout (``--connect-timeout``) and every step a deadline (``--open-seconds``): a reader the
  server does not take fails with its reason, it never hangs the benchmark.
- At each step, with the readers idle: server CPU over ``--idle-seconds``, RSS and RSS per
  reader (less the baseline), threads and threads per reader; then a loop of normal requests,
  one after the other on one keep-alive connection: a Durable Streams catch-up read (GET of a
  stream of 100 messages from ``offset=-1``), an append (POST of one message to a JSON stream),
  and the dashboard's runs page (GET ``/runs``): p50 and p99 in ms.
- Appends a few chunks to the run stream (HTTP POSTs) and counts the readers that receive all
  of them: the readers are live, not merely connected.
- Closes every reader and watches the server for up to ``--return-seconds`` (10 s): whether its
  RSS and threads return to within 10 % of the baseline, and when its sockets show every
  reader's connection closed. A worker that the arbiter killed and replaced is noted: its
  figures are then the new worker's.

Figures only: nothing is asserted about time. The exit status is non-zero only if the benchmark
itself breaks (the server does not start, a client process fails), or, with ``--smoke``, if a
reader could not connect or missed an appended chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import http.client
import json
import math
import multiprocessing
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from procstat import (
    cpu_seconds,
    die_with_parent,
    percentile,
    process_tree,
    raise_fd_limit,
    status_sum,
    stop_server,
)

HOST = "127.0.0.1"
KEY = "idle"  # the run stream the readers follow
CATCH_UP_STREAM = "bench/catch-up"  # read from its start by the request loop
APPEND_STREAM = "bench/appends"  # appended to by the request loop
CATCH_UP_MESSAGES = 100
READS_PER_CLIENT_PROCESS = 2500
CONNECTS_AT_ONCE = 50  # per client process: connection attempts in flight at once
REQUEST_TIMEOUT = 10.0
RETURN_SECONDS = 10.0  # how long to watch the server come back after the readers close
RETURN_MARGIN = 0.10
SOCKETS_MARGIN = 2  # sockets over the baseline's that still count as every reader closed
BOTH = ("ws", "sse")  # the kinds of --kind both, the default
SERVE = [sys.executable, "-m", "runstream.server", "serve", "--port", "{port}"]
GUNICORN_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] ")  # its time and pid
PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^[\w.]+(Error|Exception)\b|handler failed")


class Broken(Exception):
    """The benchmark itself cannot go on (not a figure of the server's)."""


# -- /proc -------------------------------------------------------------------------------------


def open_fds(pids: list[int]) -> tuple[int, int]:
    """Open descriptors of these processes, and how many of them are sockets."""
    total = sockets = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                total += 1
                with contextlib.suppress(OSError):
                    sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return total, sockets


@dataclass(frozen=True)
class Snapshot:
    """The server's processes at one moment."""

    pids: tuple[int, ...]
    rss_mib: float
    threads: int
    fds: int
    sockets: int

    @classmethod
    def of(cls, pid: int) -> Snapshot:
        pids = process_tree(pid)
        return cls(
            tuple(sorted(pids)),
            status_sum(pids, "VmRSS") / 1024,
            status_sum(pids, "Threads"),
            *open_fds(pids),
        )


# -- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(f"    | {line[:200]}" for line in text[-lines:]) or "    | (empty)"

    def log_problems(self) -> list[str]:
        """The log's errors and warnings: gunicorn's, the app's, and each exception's last line."""
        return [
            GUNICORN_PREFIX.sub("", line.strip())[:200]
            for line in self.log.read_text(errors="replace").splitlines()
            if PROBLEM.search(line)
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_command(template: str | None, port: int) -> list[str]:
    parts = SERVE if template is None else shlex.split(template)
    return [part.format(port=port) for part in parts]


@contextlib.contextmanager
def server_running(
    template: str | None, live_readers: int, logs: Path, name: str, sse_max_duration: float
) -> Iterator[Server]:
    """The server on a fresh SQLite instance folder, auth disabled, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="connections-instance-") as instance:
        port = free_port()
        command = server_command(template, port)
        log = logs / f"server-{name}-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                env={
                    **os.environ,
                    "RUNSTREAM_INSTANCE_PATH": instance,
                    "RUNSTREAM_AUTH": "disabled",
                    "RUNSTREAM_SSE_MAX_DURATION": f"{sse_max_duration:g}",
                    "RUNSTREAM_MAX_LIVE_READERS": str(live_readers),
                },
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # this process starts no threads
            )
        server = Server(port, process, log)
        try:
            wait_until_serving(server, 60)
            yield server
        finally:
            stop_server(process)


def wait_until_serving(server: Server, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if not server.alive:
            raise Broken(
                f"the server exited at start ({server.process.returncode}):\n{server.log_tail()}"
            )
        connection = http.client.HTTPConnection(HOST, server.port, timeout=2)
        try:
            connection.request("HEAD", "/v1/stream/ready")
            connection.getresponse().read()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise Broken(f"no server after {seconds:g} s:\n{server.log_tail()}") from error
            time.sleep(0.1)
        finally:
            connection.close()


# -- requests from the benchmark's own process -------------------------------------------------


def set_up_streams(server: Server) -> str:
    """A run with one chunk in its stream ``idle``; the request loop's two streams. The run id."""
    import httpx

    json_type = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
        response = client.post("/api/v1/tasks/bench-connections/trigger", json={"payload": {}})
        response.raise_for_status()
        run_id = str(response.json()["id"])
        client.post(
            f"/v1/stream/runs/{run_id}/{KEY}", content='[{"n": 0}]', headers=json_type
        ).raise_for_status()
        messages = [{"n": n, "pad": "x" * 80} for n in range(CATCH_UP_MESSAGES)]
        for path, body in ((CATCH_UP_STREAM, json.dumps(messages)), (APPEND_STREAM, "")):
            client.put(f"/v1/stream/{path}", content=body, headers=json_type).raise_for_status()
        return run_id


def append_chunks(server: Server, run_id: str, count: int) -> list[str]:
    """``count`` chunks appended to the run stream, one POST each; what went wrong, if anything."""
    import httpx

    problems = []
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
        for n in range(1, count + 1):
            try:
                response = client.post(
                    f"/v1/stream/runs/{run_id}/{KEY}",
                    content=json.dumps([{"n": n}]),
                    headers={"Content-Type": "application/json"},
                )
                if response.status_code >= 400:
                    problems.append(f"append {n}: {response.status_code} {response.text[:100]}")
            except httpx.HTTPError as error:
                problems.append(f"append {n}: {type(error).__name__}: {error}")
    return problems


REQUESTS = ("read", "append", "runs")


@dataclass
class Latencies:
    """The request loop's times per kind of request, in ms, and its failures."""

    times: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in REQUESTS})
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    iterations: int = 0
    cut_short: bool = False

    def figure(self, name: str) -> str:
        ordered = sorted(self.times[name])
        if not ordered:
            return "-"
        return f"{percentile(ordered, 0.5):.1f} / {percentile(ordered, 0.99):.1f}"


def request_loop(server: Server, iterations: int, budget_seconds: float) -> Latencies:
    """``iterations`` rounds of a catch-up read, an append and the runs page, one at a time."""
    import httpx

    latencies = Latencies()
    deadline = time.monotonic() + budget_seconds
    json_type = {"Content-Type": "application/json"}
    body = json.dumps({"pad": "x" * 80})
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
        requests = {
            "read": lambda: client.get(f"/v1/stream/{CATCH_UP_STREAM}", params={"offset": "-1"}),
            "append": lambda: client.post(
                f"/v1/stream/{APPEND_STREAM}", content=body, headers=json_type
            ),
            "runs": lambda: client.get("/runs"),
        }
        for _ in range(iterations):
            if time.monotonic() > deadline or not server.alive:
                latencies.cut_short = True
                break
            for name, send in requests.items():
                started = time.perf_counter()
                try:
                    response = send()
                    response.read()
                except httpx.HTTPError as error:
                    latencies.failures[f"{name}: {type(error).__name__}"] += 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code >= 400:
                    latencies.failures[f"{name}: HTTP {response.status_code}"] += 1
                else:
                    latencies.times[name].append(elapsed)
            latencies.iterations += 1
    return latencies


# -- the readers (in client processes) ---------------------------------------------------------


class Reader(asyncio.Protocol):
    """One idle reader over a raw connection: counts the chunks it receives, and says why its
    connection ended. Subclasses parse the response body."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()  # None once the response head has arrived
        self.became_live = asyncio.get_running_loop().create_future()
        self.stage = "connecting"
        self.live = False
        self.chunks = 0
        self.mark = 0
        self.live_at = 0.0
        self.chunks_at = 0.0  # when the last chunk arrived (time.time())
        self.ended: str | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stage = "waiting for the response"
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.fail("the response head is too long")
                return
            head, data = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head = None
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            if not self.accept(status, head.lower()):
                self.fail(f"answered {status!r}")
                return
            self.stage = "waiting for the first event"
            if not data:
                return
        self.body(data)

    def accept(self, status: str, head: bytes) -> bool:
        raise NotImplementedError

    def body(self, data: bytes) -> None:
        raise NotImplementedError

    def got_chunks(self, count: int) -> None:
        self.chunks += count
        self.chunks_at = time.time()

    def now_live(self) -> None:
        if not self.live and self.ended is None:
            self.live, self.stage, self.live_at = True, "live", time.monotonic()
            if not self.became_live.done():
                self.became_live.set_result(None)

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        if not self.became_live.done():
            self.became_live.set_result(None)

    def fail(self, reason: str) -> None:
        self.end(reason)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            because = f" ({type(exc).__name__})" if exc else ""
            self.end(f"the server closed the connection{because}")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class WebSocketReader(Reader):
    """A websocket reader without compression (as the server has it for readers)."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.frames = bytearray()
        self.message = bytearray()

    def accept(self, status: str, head: bytes) -> bool:
        return status.startswith("HTTP/1.1 101")

    def body(self, data: bytes) -> None:
        self.frames += data
        while len(self.frames) >= 2:
            first, second = self.frames[0], self.frames[1]
            size, start = second & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(self.frames[2:4]), 4
            elif size == 127:
                size, start = int.from_bytes(self.frames[2:10]), 10
            if second & 0x80:
                start += 4  # a masked frame: no server sends one
            if len(self.frames) < start + size:
                return
            payload = bytes(self.frames[start : start + size])
            del self.frames[: start + size]
            self.frame(first & 0x0F, bool(first & 0x80), payload)

    def frame(self, opcode: int, final: bool, payload: bytes) -> None:
        if opcode in (0, 1, 2):
            self.message += payload
            if final:
                text, self.message = bytes(self.message), bytearray()
                self.text_message(text)
        elif opcode == 8:
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else None
            reason = payload[2:].decode(errors="replace")
            self.fail(f"closed by the server: {code} {reason}".strip())
        elif opcode == 9 and self.transport is not None:  # ping: a pong, masked with zeros
            self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def text_message(self, text: bytes) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.fail(f"a frame that is no JSON: {text[:60]!r}")
            return
        if message.get("type") == "chunks":
            self.got_chunks(len(message.get("chunks", ())))
            self.now_live()
        elif message.get("type") == "end":
            self.fail("the stream ended")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # A close frame (code 1000), masked with zeros, as a client must mask.
            self.transport.write(b"\x88\x82\0\0\0\0" + (1000).to_bytes(2))
        super().close()


class SSEReader(Reader):
    """An SSE reader from the tail: live at its first control event."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.chunked = False
        self.raw = bytearray()
        self.left = 0  # bytes of the current HTTP chunk still to come
        self.text = bytearray()

    def accept(self, status: str, head: bytes) -> bool:
        self.chunked = b"transfer-encoding: chunked" in head
        return status.startswith("HTTP/1.1 200")

    def body(self, data: bytes) -> None:
        if not self.chunked:
            self.events(data)
            return
        self.raw += data
        while self.raw:
            if self.left == 0:
                line_end = self.raw.find(b"\r\n")
                if line_end < 0:
                    return
                line = bytes(self.raw[:line_end]).split(b";", 1)[0].strip()
                del self.raw[: line_end + 2]
                if not line:
                    continue  # the line break after a chunk's data
                self.left = int(line, 16)
                if self.left == 0:
                    self.fail("the server ended the response")
                    return
            piece = bytes(self.raw[: self.left])
            del self.raw[: len(piece)]
            self.left -= len(piece)
            self.events(piece)

    def events(self, data: bytes) -> None:
        self.text += data
        *events, rest = bytes(self.text).split(b"\n\n")
        self.text = bytearray(rest)
        for event in events:
            if event.startswith(b"event: data"):
                payload = b"\n".join(
                    line[5:] for line in event.split(b"\n")[1:] if line.startswith(b"data:")
                )
                with contextlib.suppress(ValueError, TypeError):
                    self.got_chunks(len(json.loads(payload)))
            elif event.startswith(b"event: control"):
                self.now_live()


class LongPollReader(Reader):
    """A long-poll reader from the tail, on one keep-alive connection: a plain GET at
    ``offset=now`` learns the tail's offset (live once it is answered); then each long-poll
    waits there until new messages come (counted) or the server's timeout (204), and the next
    one starts at the offset the last one answered."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data
        while self.ended is None and (response := take_response(self.received)) is not None:
            self.answered(*response)

    def answered(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        offset = headers.get(b"stream-next-offset")
        if status not in (200, 204) or offset is None:
            self.fail(f"answered {status}" + " without Stream-Next-Offset" * (offset is None))
            return
        if self.live and status == 200:
            with contextlib.suppress(ValueError, TypeError):
                self.got_chunks(len(json.loads(body)))
        self.now_live()
        if self.transport is not None:
            poll = b"offset=" + offset + b"&live=long-poll"
            self.transport.write(self.request.replace(b"offset=now", poll, 1))


def take_response(received: bytearray) -> tuple[int, dict[bytes, bytes], bytes] | None:
    """The first whole HTTP/1.1 response in ``received`` (its body sized by Content-Length or
    chunked, without trailers), taken out of it: status, headers (lower-case names), body; None
    while it has not all arrived."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return None
    status_line, *lines = bytes(received[:end]).split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body, position = bytearray(), end + 4
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            line_end = received.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(received[position:line_end]).split(b";", 1)[0], 16)
            position = line_end + 2 + size + 2  # the chunk, and the line break after it
            if len(received) < position:
                return None
            if size == 0:
                break
            body += received[line_end + 2 : position - 2]
    else:
        position += int(headers.get(b"content-length", b"0"))
        if len(received) < position:
            return None
        body += received[end + 4 : position]
    del received[:position]
    return int(status_line.split()[1]), headers, bytes(body)


READERS: dict[str, type[Reader]] = {
    "ws": WebSocketReader,
    "sse": SSEReader,
    "long-poll": LongPollReader,
}


@dataclass(frozen=True)
class ClientJob:
    """What one client process holds: readers of one kind (of READERS) of the stream at
    ``path`` (a websocket route for ``ws``, a Durable Streams stream for the others)."""

    index: int
    kind: str
    port: int
    path: str
    connect_timeout: float
    parent_pid: int


@dataclass
class ClientReport:
    """What one client process says after a command: its readers, counted by state."""

    live: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: collections.Counter[str] = field(default_factory=collections.Counter)
    connect_ms: list[float] = field(default_factory=list)
    received: int = 0  # live readers with every chunk appended since the mark
    last_chunk_at: float = 0.0
    rss_mib: float = 0.0


def reader_path(kind: str, run_id: str) -> str:
    """Where a reader of ``kind`` reads the run stream ``KEY`` of ``run_id``."""
    if kind == "ws":
        return f"/realtime/v2/streams/{run_id}/{KEY}"
    return f"/v1/stream/runs/{run_id}/{KEY}"


def reader_request(job: ClientJob) -> bytes:
    host = f"Host: {HOST}:{job.port}\r\n"
    if job.kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {job.path}?timeout_in_seconds=600 HTTP/1.1\r\n"
            f"{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    if job.kind == "long-poll":
        return f"GET {job.path}?offset=now HTTP/1.1\r\n{host}\r\n".encode()
    return (
        f"GET {job.path}?offset=now&live=sse HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n"
    ).encode()


def client_process(job: ClientJob, connection: Connection) -> None:
    """A client process: hold readers as the benchmark's commands say, until it says close (or
    goes away)."""
    raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark's process decides
    with contextlib.suppress(EOFError, BrokenPipeError, KeyboardInterrupt):
        asyncio.run(serve_commands(job, connection))


async def serve_commands(job: ClientJob, connection: Connection) -> None:
    loop = asyncio.get_running_loop()
    readers: list[Reader] = []
    connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)
    watchdog = asyncio.create_task(watch_parent(job.parent_pid))
    try:
        while True:
            name, argument = await loop.run_in_executor(None, connection.recv)
            report = ClientReport()
            if name == "open":
                target, seconds = argument
                report.connect_ms = await open_readers(job, readers, target, seconds, connecting)
            elif name == "mark":
                for reader in readers:
                    reader.mark = reader.chunks
            elif name == "await":
                count, seconds = argument
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and any(
                    r.live and r.ended is None and r.chunks - r.mark < count for r in readers
                ):
                    await asyncio.sleep(0.05)
                report.received = sum(r.chunks - r.mark >= count for r in readers if r.live)
                report.last_chunk_at = max((r.chunks_at for r in readers), default=0.0)
            elif name == "close":
                for reader in readers:
                    reader.close()
                await asyncio.sleep(0.5)  # the close frames leave
            count_readers(readers, report)
            connection.send(report)
            if name == "close":
                return
    finally:
        watchdog.cancel()
        for reader in readers:
            if reader.transport is not None:
                reader.transport.abort()


async def watch_parent(parent_pid: int) -> None:
    """End this process when the benchmark's process is gone, whatever it is doing."""
    while True:
        await asyncio.sleep(1)
        if os.getppid() != parent_pid:
            os._exit(3)


def count_readers(readers: list[Reader], report: ClientReport) -> None:
    for reader in readers:
        if reader.ended is None and reader.live:
            report.live += 1
        elif reader.live:
            report.lost[reader.ended or "?"] += 1
        else:
            report.failed[reader.ended or f"still {reader.stage}"] += 1
    report.rss_mib = status_sum([os.getpid()], "VmRSS") / 1024


async def open_readers(
    job: ClientJob,
    readers: list[Reader],
    target: int,
    seconds: float,
    connecting: asyncio.Semaphore,
) -> list[float]:
    """Open readers until this process holds ``target`` (counting the failed ones); give up on
    what is not live after ``seconds``. The connection times (ms) of the live ones."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    kind = READERS[job.kind]
    times: list[float] = []

    async def open_one(reader: Reader) -> None:
        async with connecting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reader.end(f"not tried: the step's {seconds:g} s were over")
                return
            started = time.monotonic()
            timeout = min(job.connect_timeout, remaining)
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: reader, HOST, job.port)
                    await reader.became_live
            except TimeoutError:
                reader.fail(f"no answer within {timeout:.0f} s ({reader.stage})")
            except OSError as error:
                reader.end(f"{type(error).__name__}: {error.strerror or error}")
            if reader.live:
                times.append((reader.live_at - started) * 1000)

    new = [kind(reader_request(job)) for _ in range(target - len(readers))]
    readers.extend(new)
    tasks = [asyncio.create_task(open_one(reader)) for reader in new]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=seconds + job.connect_timeout + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for reader in new:
            if not reader.live and reader.ended is None:
                reader.fail(f"gave up ({reader.stage})")
    return times


class Clients:
    """The client processes of one kind of reader, and the commands the benchmark sends them."""

    def __init__(self, job: ClientJob, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.connections: list[Connection] = []
        self.processes: list[SpawnProcess] = []
        for index in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=client_process,
                args=(dataclasses.replace(job, index=index), theirs),
                daemon=True,
            )
            process.start()
            theirs.close()
            self.connections.append(ours)
            self.processes.append(process)

    def command(self, name: str, arguments: list[Any] | Any, timeout: float) -> list[ClientReport]:
        """Send each process its argument (one list entry each, or the same to all); their
        reports."""
        each = arguments if isinstance(arguments, list) else [arguments] * len(self.connections)
        for connection, argument in zip(self.connections, each, strict=True):
            connection.send((name, argument))
        deadline = time.monotonic() + timeout
        reports = []
        for index, connection in enumerate(self.connections):
            if not connection.poll(max(0.0, deadline - time.monotonic())):
                raise Broken(f"client process {index} did not answer {name!r} in {timeout:g} s")
            try:
                reports.append(connection.recv())
            except EOFError:
                code = self.processes[index].exitcode
                raise Broken(f"client process {index} exited ({code}) during {name!r}") from None
        return reports

    def stop(self) -> None:
        for connection in self.connections:
            connection.close()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


def split(total: int, parts: int) -> list[int]:
    """``total`` over ``parts``, as evenly as can be."""
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


def merged(reports: list[ClientReport]) -> ClientReport:
    total = ClientReport()
    for report in reports:
        total.live += report.live
        total.failed.update(report.failed)
        total.lost.update(report.lost)
        total.connect_ms.extend(report.connect_ms)
        total.received += report.received
        total.last_chunk_at = max(total.last_chunk_at, report.last_chunk_at)
        total.rss_mib += report.rss_mib
    return total


# -- one kind of reader, on its own server ------------------------------------------------------


@dataclass
class Step:
    """The figures with ``asked`` readers asked for (0: the baseline)."""

    kind: str
    asked: int
    live: int = 0
    open_seconds: float | None = None
    connect_p50: float | None = None
    connect_p99: float | None = None
    cpu_percent: float | None = None
    snapshot: Snapshot | None = None
    latencies: Latencies | None = None
    client_rss_mib: float | None = None


@dataclass
class KindResult:
    kind: str
    steps: list[Step] = field(default_factory=list)
    after_close: Snapshot | None = None
    # Seconds until RSS and threads were back within RETURN_MARGIN of the baseline, if they were.
    rss_back_in: float | None = None
    threads_back_in: float | None = None
    sockets_back_in: float | None = None  # every reader's connection closed by the server
    return_seconds: float = RETURN_SECONDS
    last_pids: tuple[int, ...] = ()
    lost_noted: int = 0
    delivery: str | None = None
    notes: list[str] = field(default_factory=list)
    broken: bool = False
    unreached: bool = False  # some reader could not connect, or missed an appended chunk


@dataclass(frozen=True)
class Options:
    readers: int
    steps: list[int]
    server_cmd: str | None
    live_readers: int
    client_processes: int
    connect_timeout: float
    open_seconds: float
    idle_seconds: float
    iterations: int
    appends: int
    sse_max_duration: float
    return_seconds: float
    logs: Path


def run_kind(kind: str, options: Options) -> KindResult:
    result = KindResult(kind)
    try:
        with server_running(
            options.server_cmd, options.live_readers, options.logs, kind, options.sse_max_duration
        ) as server:
            try:
                measure_kind(kind, server, options, result)
            finally:
                problems = server.log_problems()
                if problems:
                    counts = collections.Counter(problems)
                    result.notes.append(
                        f"server log: {len(problems)} lines of errors or warnings:\n"
                        + "\n".join(f"    | {n} x {line}" for line, n in counts.most_common(8))
                    )
                if result.broken or result.unreached or problems:
                    result.notes.append(
                        f"server log ({server.log}), last lines:\n{server.log_tail()}"
                    )
    except Broken as error:
        result.broken = True
        result.notes.append(f"the benchmark broke: {error}")
    return result


def measure_kind(kind: str, server: Server, options: Options, result: KindResult) -> None:
    run_id = set_up_streams(server)
    request_loop(server, 20, 30)  # warm up: first requests import and compile
    time.sleep(1)
    baseline = Step(kind, 0)
    baseline.cpu_percent, baseline.snapshot = idle_window(server, options.idle_seconds)
    baseline.latencies = request_loop(server, options.iterations, 120)
    result.steps.append(baseline)
    assert baseline.snapshot is not None
    base = baseline.snapshot

    processes = options.client_processes or max(
        2, math.ceil(options.readers / READS_PER_CLIENT_PROCESS)
    )
    job = ClientJob(
        0, kind, server.port, reader_path(kind, run_id), options.connect_timeout, os.getpid()
    )
    clients = Clients(job, processes)
    try:
        for asked in options.steps:
            step = open_step(kind, asked, server, clients, processes, options, result)
            result.steps.append(step)
            note_processes(server, result, f"at R={asked}")
            if not server.alive:
                result.broken = True
                result.notes.append(f"the server exited ({server.process.returncode})")
                return
        check_delivery(server, clients, run_id, options, result)
        note_processes(server, result, "at the delivery check")
        reports = merged(clients.command("close", None, 30))
        note_lost(reports, result, "before they were closed")
    finally:
        clients.stop()
    result.return_seconds = options.return_seconds
    watch_return(server, base, result, options.return_seconds)
    note_processes(server, result, "after the readers closed")


def note_processes(server: Server, result: KindResult, when: str) -> None:
    """A note when the server's processes are no longer those of the baseline (a worker that
    was killed and replaced: every reader it held is gone)."""
    first = result.steps[0].snapshot if result.steps else None
    base = first.pids if first else ()
    pids = tuple(sorted(process_tree(server.process.pid)))
    if pids != base and pids != result.last_pids:
        result.notes.append(
            f"{when}: the server's processes are {list(pids)}, not {list(base)} as at the "
            "baseline: its worker was replaced (see the server log)"
        )
    result.last_pids = pids


def note_lost(report: ClientReport, result: KindResult, when: str) -> None:
    """A note on the readers that lost their connection since the last such note."""
    lost = sum(report.lost.values())
    if lost > result.lost_noted:
        result.notes.append(
            f"{lost - result.lost_noted} live readers lost their connection {when} "
            f"(all so far: {describe(report.lost)})"
        )
        result.lost_noted = lost


def open_step(
    kind: str,
    asked: int,
    server: Server,
    clients: Clients,
    processes: int,
    options: Options,
    result: KindResult,
) -> Step:
    step = Step(kind, asked)
    started = time.monotonic()
    report = merged(
        clients.command(
            "open",
            [(share, options.open_seconds) for share in split(asked, processes)],
            options.open_seconds + options.connect_timeout + 60,
        )
    )
    step.open_seconds = time.monotonic() - started
    if report.connect_ms:
        ordered = sorted(report.connect_ms)
        step.connect_p50, step.connect_p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
    time.sleep(1)  # let the last handshakes settle
    step.cpu_percent, step.snapshot = idle_window(server, options.idle_seconds)
    after = merged(clients.command("status", None, 30))  # lost during the idle window too
    step.live, step.client_rss_mib = after.live, after.rss_mib
    if after.live < asked:
        result.unreached = True
        failed = f"; failed: {describe(after.failed)}" if after.failed else ""
        result.notes.append(
            f"{kind} R={asked}: the server holds {after.live} of {asked} readers{failed}"
        )
    note_lost(after, result, f"by the end of the idle window at R={asked}")
    step.latencies = request_loop(server, options.iterations, 120)
    if step.latencies.cut_short:
        result.notes.append(
            f"{kind} R={asked}: the request loop stopped after {step.latencies.iterations} "
            "rounds (120 s, or the server exited)"
        )
    return step


def describe(counts: collections.Counter[str], most: int = 4) -> str:
    return ", ".join(f"{n} x {reason}" for reason, n in counts.most_common(most))


def idle_window(server: Server, seconds: float) -> tuple[float, Snapshot]:
    """The server's CPU (% of one core) over ``seconds`` of doing nothing asked; its state."""
    pids = process_tree(server.process.pid)
    before, started = sum(cpu_seconds(pids)), time.monotonic()
    time.sleep(seconds)
    used = sum(cpu_seconds(pids)) - before
    return 100 * used / (time.monotonic() - started), Snapshot.of(server.process.pid)


def check_delivery(
    server: Server, clients: Clients, run_id: str, options: Options, result: KindResult
) -> None:
    """Append chunks to the run stream: every live reader must receive all of them."""
    before = merged(clients.command("mark", None, 30))
    note_lost(before, result, "before the delivery check")
    sent_at = time.time()
    problems = append_chunks(server, run_id, options.appends)
    after = merged(clients.command("await", (options.appends, 15.0), 60))
    lag = f", the last {after.last_chunk_at - sent_at:.2f} s after the first POST" * bool(
        after.received
    )
    result.delivery = (
        f"{options.appends} chunks appended by HTTP POST: {after.received} of {before.live} "
        f"live readers received all of them{lag}"
    )
    if problems:
        result.delivery += f"; the appends failed: {'; '.join(problems[:3])}"
    if after.received < before.live or problems:
        result.unreached = True


def watch_return(server: Server, base: Snapshot, result: KindResult, seconds: float) -> None:
    """Watch RSS and threads after the readers closed, until both are back or time is up."""
    started = time.monotonic()
    while True:
        now = Snapshot.of(server.process.pid)
        result.after_close = now
        elapsed = time.monotonic() - started
        if result.rss_back_in is None and now.rss_mib <= base.rss_mib * (1 + RETURN_MARGIN):
            result.rss_back_in = elapsed
        if result.threads_back_in is None and now.threads <= base.threads * (1 + RETURN_MARGIN):
            result.threads_back_in = elapsed
        if result.sockets_back_in is None and now.sockets <= base.sockets + SOCKETS_MARGIN:
            result.sockets_back_in = elapsed
        done = None not in (result.rss_back_in, result.threads_back_in, result.sockets_back_in)
        if done or elapsed >= seconds or not server.alive:
            return
        time.sleep(0.5)


# -- the report --------------------------------------------------------------------------------


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


IDLE_COLUMNS = (
    f"{'kind':<4} {'asked':>6} {'live':>6} {'open s':>7} {'conn p50/p99 ms':>16} "
    f"{'CPU %':>6} {'RSS MiB':>8} {'KiB/rdr':>8} {'threads':>8} {'thr/rdr':>8} {'fds':>6} "
    f"{'cli MiB':>8}"
)
LATENCY_COLUMNS = (
    f"{'kind':<4} {'live':>6} {'rounds':>6} {'GET read p50/p99':>17} "
    f"{'POST append p50/p99':>20} {'GET /runs p50/p99':>18}  failures"
)


def idle_line(step: Step, base: Step) -> str:
    snap, base_snap = step.snapshot, base.snapshot
    per_reader_kib = per_reader_threads = None
    if step.asked and snap and base_snap and step.live:
        per_reader_kib = (snap.rss_mib - base_snap.rss_mib) * 1024 / step.live
        per_reader_threads = (snap.threads - base_snap.threads) / step.live
    connect = (
        f"{step.connect_p50:.0f} / {step.connect_p99:.0f}" if step.connect_p50 is not None else "-"
    )
    return (
        f"{step.kind:<4} {step.asked:>6} {step.live:>6} {number(step.open_seconds):>7} "
        f"{connect:>16} {number(step.cpu_percent):>6} "
        f"{number(snap.rss_mib if snap else None):>8} {number(per_reader_kib):>8} "
        f"{snap.threads if snap else '-':>8} {number(per_reader_threads, 2):>8} "
        f"{snap.fds if snap else '-':>6} {number(step.client_rss_mib, 0):>8}"
    )


def latency_line(step: Step) -> str:
    latencies = step.latencies
    if latencies is None:
        return f"{step.kind:<4} {step.live:>6}  (not measured)"
    failures = describe(latencies.failures, 3) if latencies.failures else "-"
    return (
        f"{step.kind:<4} {step.live:>6} {latencies.iterations:>6} "
        f"{latencies.figure('read'):>17} {latencies.figure('append'):>20} "
        f"{latencies.figure('runs'):>18}  {failures}"
    )


def return_line(result: KindResult) -> str:
    base = result.steps[0].snapshot if result.steps else None
    now = result.after_close
    if base is None or now is None:
        return f"{result.kind}: not measured"

    def verdict(seconds: float | None) -> str:
        if seconds is None:
            return f"NOT within {RETURN_MARGIN:.0%} of baseline after {result.return_seconds:g} s"
        return f"within {RETURN_MARGIN:.0%} of baseline after {seconds:.1f} s"

    closed = (
        f"closed after {result.sockets_back_in:.1f} s"
        if result.sockets_back_in is not None
        else f"{now.sockets - base.sockets} still open after {result.return_seconds:g} s"
    )
    return (
        f"{result.kind}: RSS {now.rss_mib:.1f} MiB (baseline {base.rss_mib:.1f}): "
        f"{verdict(result.rss_back_in)}; threads {now.threads} (baseline {base.threads}): "
        f"{verdict(result.threads_back_in)}; the readers' connections: {closed} "
        f"(sockets {now.sockets}, baseline {base.sockets})"
    )


def report(results: list[KindResult]) -> None:
    print(
        "\nidle readers (CPU over the idle window; RSS and threads summed over the server's "
        "processes; per reader: less the baseline)"
    )
    print(IDLE_COLUMNS)
    for result in results:
        for step in result.steps:
            print(idle_line(step, result.steps[0]))
    print("\nrequests while the readers are open, one at a time (ms)")
    print(LATENCY_COLUMNS)
    for result in results:
        for step in result.steps:
            print(latency_line(step))
    print("\nafter closing every reader (RSS, threads and descriptors, watched until back)")
    for result in results:
        print(return_line(result))
    print("\nlive delivery")
    for result in results:
        print(f"{result.kind}: {result.delivery or 'not checked'}")
    for result in results:
        for note in result.notes:
            print(f"note ({result.kind}): {note}")


# -- the command -------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=10000, help="readers at the last step")
    parser.add_argument(
        "--kind", choices=(*READERS, "both"), default="both", help="both: ws, then sse"
    )
    parser.add_argument(
        "--steps", help="reader counts to measure at, comma-separated (default: 2000,R)"
    )
    parser.add_argument(
        "--server-cmd",
        help="serve with this command instead of `runstream serve`; {port} is filled in, and it "
        "gets RUNSTREAM_INSTANCE_PATH, RUNSTREAM_AUTH=disabled, RUNSTREAM_MAX_LIVE_READERS",
    )
    parser.add_argument("--client-processes", type=int, default=0, help="default: R/2500, >= 2")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="per reader, s")
    parser.add_argument("--open-seconds", type=float, default=120.0, help="per step, at most")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="the idle window, s")
    parser.add_argument("--iterations", type=int, default=200, help="rounds of the request loop")
    parser.add_argument("--appends", type=int, default=3, help="chunks of the delivery check")
    parser.add_argument("--sse-max-duration", type=float, default=900.0, help="the server's")
    parser.add_argument(
        "--return-seconds",
        type=float,
        default=RETURN_SECONDS,
        help="how long to watch RSS and threads come back after the readers close",
    )
    parser.add_argument("--smoke", action="store_true", help="200 readers, short windows")
    args = parser.parse_args()
    if args.smoke:
        args.readers, args.idle_seconds, args.iterations = 200, 2.0, 20
        args.steps = args.steps or "200"
    if args.readers < 1:
        parser.error("--readers must be at least 1")
    steps = [int(part) for part in (args.steps or f"2000,{args.readers}").split(",") if part]
    args.step_list = sorted({min(step, args.readers) for step in steps if step > 0})
    return args


def main() -> int:
    args = parse_arguments()
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    kinds = list(BOTH) if args.kind == "both" else [args.kind]
    logs = Path(tempfile.mkdtemp(prefix="connections-logs-"))
    options = Options(
        readers=args.readers,
        steps=args.step_list,
        server_cmd=args.server_cmd,
        live_readers=args.readers + 64,
        client_processes=args.client_processes,
        connect_timeout=args.connect_timeout,
        open_seconds=args.open_seconds,
        idle_seconds=args.idle_seconds,
        iterations=args.iterations,
        appends=args.appends,
        sse_max_duration=args.sse_max_duration,
        return_seconds=args.return_seconds,
        logs=logs,
    )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = " ".join(server_command(options.server_cmd, 0)).replace("--port 0", "--port PORT")
    shown += f" (RUNSTREAM_MAX_LIVE_READERS={options.live_readers})"
    print(
        f"idle readers: {', '.join(kinds)} at R = {', '.join(map(str, options.steps))}; "
        f"server: {shown}; {os.cpu_count()} CPUs, open files limit {soft}, "
        f"SSE responses last {options.sse_max_duration:g} s",
        flush=True,
    )
    results: list[KindResult] = []
    try:
        for kind in kinds:
            result = run_kind(kind, options)
            results.append(result)
            print(f"  {kind}: done", flush=True)
    finally:
        keep = any(r.broken or r.unreached or r.notes for r in results)
        if keep:
            print(f"\nthe server logs are kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    report(results)
    broken = any(r.broken for r in results)
    failed = broken or (args.smoke and any(r.unreached for r in results))
    if failed:
        print("\nFAILED: the benchmark broke" + (", or a reader was not served" * args.smoke))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
