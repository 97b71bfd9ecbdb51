"""Two server processes sharing PostgreSQL and a hub (Redis, or PostgreSQL's LISTEN/NOTIFY):
what is appended through one reaches the live readers of the other at once, every chunk once and
in order; and neither the crash of a server (its writers move over to the other) nor an outage
of Redis loses or repeats a chunk.

Needs RUNSTREAM_TEST_DATABASE_URL and RUNSTREAM_TEST_REDIS_URL (the shared database is reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import (
    AUTH,
    POSTGRES_URL,
    SECRET_KEY,
    Proxy,
    ServerProcess,
    arun,
    end_run,
    queued_run,
    reset_postgres,
    start_server,
)
from websockets.sync.client import connect

import runstream._config
from runstream import configure, streams
from runstream.server.db.engine import make_engine

REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL", "")
pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL),
    reason="set RUNSTREAM_TEST_DATABASE_URL and RUNSTREAM_TEST_REDIS_URL to run this",
)
CHUNKS = 50
# Far longer than the test waits: a reader that hears of an append only when its long-poll
# times out, or when its follower re-reads the store on the hub's slow timer, comes too late.
LONG_POLL_TIMEOUT = 30
DELIVERED_WITHIN = 1.0  # the hubs' resync timer is 5 s
# The hubs that span processes, by the Redis URL the servers get: none for LISTEN/NOTIFY.
HUBS = {"redis": REDIS_URL, "postgres": ""}
# The crash and outage tests: a chunk every PACE seconds, from each writer.
PACE = 0.02
WRITTEN = 100
REDIS_OUTAGE = 5.0
CAUGHT_UP_WITHIN = 2.0  # of Redis returning
READ_TIMEOUT = 30  # no reader waits longer than this for a chunk or the end


@pytest.fixture(scope="module")
def database() -> None:
    """The shared PostgreSQL database, emptied once for the module: the first server started
    migrates it."""
    engine = make_engine(str(POSTGRES_URL))
    reset_postgres(engine)
    engine.dispose()


def start_pair(folder: Path, redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Servers A and B on the shared database and the Redis at ``redis_url``."""
    env = {
        "RUNSTREAM_DATABASE_URL": str(POSTGRES_URL),
        "RUNSTREAM_REDIS_URL": redis_url,
        "RUNSTREAM_LONG_POLL_TIMEOUT": str(LONG_POLL_TIMEOUT),
    }
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    # One after the other: the first creates the schema.
    a = start_server(folder / "a", env=env)
    try:
        b = start_server(folder / "b", env=env)
    except BaseException:
        a.stop()
        raise
    return a, b


def stop_all(servers: tuple[ServerProcess, ...]) -> None:
    """Stop the servers at once (each takes a while to shut down gracefully)."""
    stopping = [threading.Thread(target=server.stop) for server in servers]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join()


@pytest.fixture(scope="module", params=list(HUBS))
def redis_url(request: pytest.FixtureRequest) -> str:
    """The servers' RUNSTREAM_REDIS_URL: each test of it runs with either hub."""
    url: str = HUBS[request.param]
    return url


@pytest.fixture(scope="module")
def servers(
    database: None, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    started = start_pair(tmp_path_factory.mktemp("servers"), redis_url)
    yield started
    stop_all(started)


def sse_messages(url: str, path: str, count: int, arrived: list[tuple[float, object]]) -> None:
    """Follow ``path`` over SSE until ``count`` messages came, noting when each arrived."""
    with httpx.stream(
        "GET", f"{url}{path}", params={"offset": "-1", "live": "sse"}, headers=AUTH, timeout=30
    ) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "data":
                for message in json.loads(line.removeprefix("data:")):
                    arrived.append((time.monotonic(), message))
                if len(arrived) >= count:
                    return


def long_poll_messages(
    url: str, path: str, count: int, arrived: list[tuple[float, object]]
) -> None:
    offset = "-1"
    with httpx.Client(base_url=url, headers=AUTH, timeout=LONG_POLL_TIMEOUT + 10) as client:
        while len(arrived) < count:
            response = client.get(path, params={"offset": offset, "live": "long-poll"})
            offset = response.headers["Stream-Next-Offset"]
            if response.status_code == 200:
                now = time.monotonic()
                arrived.extend((now, message) for message in response.json())


def test_appends_through_one_server_reach_the_live_readers_of_the_other_at_once(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """A writer appends one chunk every 20 ms through server A; an SSE reader and a long-poll
    reader of server B each get every chunk once, in order, each within a second of its
    append (the hub, not the store's slow re-read, brought it)."""
    a, b = servers
    path = f"/v1/stream/scale/{uuid.uuid4().hex}"
    with a.client() as client:
        assert client.put(path, headers={"Content-Type": "application/json"}).status_code == 201
    readers = {"sse": sse_messages, "long-poll": long_poll_messages}
    arrivals: dict[str, list[tuple[float, object]]] = {name: [] for name in readers}
    threads = [
        threading.Thread(target=read, args=(b.url, path, CHUNKS, arrivals[name]), daemon=True)
        for name, read in readers.items()
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both readers are waiting at the tail

    appended_at: list[float] = []
    with a.client() as client:
        for number in range(CHUNKS):
            appended_at.append(time.monotonic())
            answer = client.post(
                path, content=json.dumps([number]), headers={"Content-Type": "application/json"}
            )
            assert answer.status_code in (200, 204), answer.text
            time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=15)

    for name, arrived in arrivals.items():
        assert [message for _, message in arrived] == list(range(CHUNKS)), name
        slowest = max(when - appended_at[number] for number, (when, _) in enumerate(arrived))
        assert slowest < DELIVERED_WITHIN, f"{name}: a chunk took {slowest:.2f} s"


def test_readers_spread_over_four_workers_get_every_chunk_once_in_order(
    servers: tuple[ServerProcess, ServerProcess], redis_url: str, tmp_path: Path
) -> None:
    """``runstream serve --workers 4`` on PostgreSQL (and Redis): 16 SSE readers, which the
    kernel spreads over the four worker processes, and a writer whose appends each land in
    whichever worker takes its connection; every reader gets every chunk once, in order."""
    server = start_server(
        tmp_path,
        env={
            "RUNSTREAM_DATABASE_URL": str(POSTGRES_URL),
            "RUNSTREAM_REDIS_URL": redis_url,
            "RUNSTREAM_LONG_POLL_TIMEOUT": str(LONG_POLL_TIMEOUT),
        },
        arguments=["--workers", "4"],
    )
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        deadline = time.monotonic() + 20  # gunicorn starts its workers one after the other
        while len(children.read_text().split()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children.read_text().split()) == 4
        path = f"/v1/stream/scale/{uuid.uuid4().hex}"
        with server.client() as client:
            created = client.put(path, headers={"Content-Type": "application/json"})
            assert created.status_code == 201
        arrivals: list[list[tuple[float, object]]] = [[] for _ in range(16)]
        threads = [
            threading.Thread(target=sse_messages, args=(server.url, path, CHUNKS, arrived))
            for arrived in arrivals
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        for number in range(CHUNKS):
            # A new connection for each append: the kernel hands each to any worker.
            answer = httpx.post(
                f"{server.url}{path}",
                content=json.dumps([number]),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert answer.status_code in (200, 204), answer.text
        for thread in threads:
            thread.join(timeout=20)
        for arrived in arrivals:
            assert [message for _, message in arrived] == list(range(CHUNKS))
    finally:
        server.stop()


# -- a server killed mid-stream, and Redis gone for a while ------------------------------------


class Failover:
    """A load balancer in front of servers: each new connection goes to the first of
    ``upstreams`` (URLs) that accepts one, so once the first server dies, connections go to the
    next. :attr:`served` counts the connections each upstream took."""

    def __init__(self, *upstreams: str) -> None:
        self._upstreams = [
            (urlsplit(url).hostname or "", urlsplit(url).port or 80) for url in upstreams
        ]
        self.served = [0] * len(upstreams)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with self._lock:
            for sock in [self._listener, *self._open]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        for number, address in enumerate(self._upstreams):
            try:
                upstream = socket.create_connection(address, timeout=5)
            except OSError:
                continue  # that server is gone: try the next
            upstream.settimeout(None)
            with self._lock:
                self.served[number] += 1
                self._open += [client, upstream]
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            _pump(client, upstream)
            return
        client.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


Arrivals = list[tuple[float, Any]]


class Reader:
    """A reader in a thread: ``read(arrived)`` appends each chunk with the time it arrived, until
    the stream ends. :meth:`chunks` waits for the end and re-raises what the reader raised."""

    def __init__(self, name: str, read: Callable[[Arrivals], None]) -> None:
        self.name = name
        self.arrived: Arrivals = []
        self._error: BaseException | None = None
        self._read = read
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read(self.arrived)
        except BaseException as error:
            self._error = error

    def chunks(self, timeout: float = READ_TIMEOUT) -> list[Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name}: the stream never ended"
        if self._error is not None:
            raise AssertionError(f"{self.name} failed") from self._error
        return [chunk for _, chunk in self.arrived]


def run_stream_readers(server: ServerProcess, run_id: str, key: str) -> list[Reader]:
    """A websocket, an SSE and a long-poll reader of a run stream on ``server``, from its
    start to its end."""
    path = f"/v1/stream/runs/{run_id}/{key}"
    websocket = f"/realtime/v2/streams/{run_id}/{key}"
    return [
        Reader(
            f"{key} over websocket",
            lambda arrived: websocket_chunks(server.url, websocket, arrived),
        ),
        Reader(f"{key} over SSE", lambda arrived: sse_until_closed(server.url, path, arrived)),
        Reader(
            f"{key} by long-poll", lambda arrived: long_poll_until_closed(server.url, path, arrived)
        ),
    ]


def websocket_chunks(url: str, route: str, arrived: Arrivals) -> None:
    """Read a run stream over its websocket from chunk 0 until its end frame."""
    address = f"ws{url.removeprefix('http')}{route}?start_index=0&timeout_in_seconds={READ_TIMEOUT}"
    with connect(address, additional_headers=AUTH, max_size=None) as websocket:
        while True:
            frame = json.loads(websocket.recv(timeout=READ_TIMEOUT))
            if frame["type"] == "end":
                return
            now = time.monotonic()
            arrived.extend((now, chunk) for chunk in frame["chunks"])


def sse_until_closed(url: str, path: str, arrived: Arrivals) -> None:
    """Follow a stream over SSE from its start until a control event says it is closed."""
    with httpx.stream(
        "GET",
        f"{url}{path}",
        params={"offset": "-1", "live": "sse"},
        headers=AUTH,
        timeout=READ_TIMEOUT,
    ) as response:
        assert response.status_code == 200, response.read()
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "data":
                now = time.monotonic()
                arrived.extend((now, chunk) for chunk in json.loads(line.removeprefix("data:")))
            elif line.startswith("data:") and event == "control":
                control = json.loads(line.removeprefix("data:"))
                if control.get("streamClosed"):
                    return


def long_poll_until_closed(url: str, path: str, arrived: Arrivals) -> None:
    """Long-poll a stream from its start until an answer says it is closed."""
    offset = "-1"
    with httpx.Client(base_url=url, headers=AUTH, timeout=LONG_POLL_TIMEOUT + 10) as client:
        while True:
            response = client.get(path, params={"offset": offset, "live": "long-poll"})
            assert response.status_code in (200, 204), response.text
            offset = response.headers["Stream-Next-Offset"]
            if response.status_code == 200:
                now = time.monotonic()
                arrived.extend((now, chunk) for chunk in response.json())
            if response.headers.get("Stream-Closed") == "true":
                return


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``sdk(url)`` points the SDK at a server (or a balancer); the test leaves it as it was."""
    monkeypatch.setattr(runstream._config, "_configured", runstream._config._configured)
    return lambda url: configure(api_url=url, secret_key=SECRET_KEY)


def test_writers_of_a_killed_server_finish_on_the_other_and_readers_get_every_chunk_once(
    database: None, tmp_path: Path, sdk: Callable[[str], None]
) -> None:
    """Two SDK writers, each piping 100 numbered chunks (one every 20 ms) to its own stream of
    a run, through a load balancer to server A; on B, a websocket, an SSE and a long-poll
    reader of each stream. Halfway, A is killed with SIGKILL: the writers reconnect, through
    the balancer, to B and finish, and every reader gets every chunk of its stream exactly
    once, in order, and then the end of the stream."""
    a, b = start_pair(tmp_path, REDIS_URL)
    balancer = Failover(a.url, b.url)
    try:
        keys = ["first", "second"]
        run_id = queued_run(b, keys, task="scale-out")
        readers = [reader for key in keys for reader in run_stream_readers(b, run_id, key)]
        time.sleep(0.5)  # every reader is waiting at the tail

        async def numbered(key: str) -> AsyncIterator[int]:
            for number in range(WRITTEN):
                if key == keys[0] and number == WRITTEN // 2:
                    await asyncio.to_thread(a.kill)
                yield number
                await asyncio.sleep(PACE)

        async def write() -> None:
            pipes = [streams.pipe(key, numbered(key), target=run_id) for key in keys]
            await asyncio.gather(*(piped.wait_until_complete() for piped in pipes))

        sdk(balancer.url)
        arun(write())
        end_run(b, run_id)

        for reader in readers:
            assert reader.chunks() == list(range(WRITTEN)), reader.name
        # Each writer wrote to A, then, after the kill, to B.
        assert balancer.served[0] >= len(keys) and balancer.served[1] >= len(keys)
    finally:
        balancer.close()
        stop_all((a, b))


def test_a_redis_outage_loses_no_chunk_and_readers_catch_up_soon_after_it(
    database: None, tmp_path: Path, sdk: Callable[[str], None]
) -> None:
    """Servers A and B reach Redis through a proxy. An SDK writer pipes a chunk every 20 ms to A;
    on B a websocket, an SSE and a long-poll reader follow the stream. One second in, Redis
    becomes unreachable for 5 s (both servers report it on /healthz), then it is back. Every
    reader gets every chunk exactly once, in order, and every chunk written before Redis
    returned has reached every reader within 2 s of its return."""
    redis = Proxy(REDIS_URL)
    a, b = start_pair(tmp_path, redis.url)
    try:
        run_id = queued_run(b, ["outage"], task="scale-out")
        readers = run_stream_readers(b, run_id, "outage")
        time.sleep(0.5)
        written_at: list[float] = []
        outage: dict[str, Any] = {}

        def cut_redis() -> None:
            """Redis away for REDIS_OUTAGE seconds, while the servers say on /healthz that
            their hub lost it."""
            redis.cut()
            outage["cut"] = time.monotonic()
            outage["reported"] = {server.url: "" for server in (a, b)}
            try:
                while time.monotonic() < outage["cut"] + REDIS_OUTAGE - 1.0:
                    for server in (a, b):
                        hub = httpx.get(f"{server.url}/healthz", timeout=1).json()["hub"]
                        if hub != "ok":
                            outage["reported"][server.url] = hub
                    if all(outage["reported"].values()):
                        break
                    time.sleep(0.1)
            finally:
                time.sleep(max(0.0, outage["cut"] + REDIS_OUTAGE - time.monotonic()))
                redis.restore()
                outage["restored"] = time.monotonic()

        async def numbered() -> AsyncIterator[int]:
            started = time.monotonic()
            outage_thread = None
            # A second before the outage, the outage, and three seconds after it.
            while time.monotonic() < started + 1.0 + REDIS_OUTAGE + 3.0:
                if outage_thread is None and time.monotonic() >= started + 1.0:
                    outage_thread = threading.Thread(target=cut_redis, daemon=True)
                    outage_thread.start()
                written_at.append(time.monotonic())
                yield len(written_at) - 1
                await asyncio.sleep(PACE)
            assert outage_thread is not None
            await asyncio.to_thread(outage_thread.join)

        async def write() -> None:
            await streams.pipe("outage", numbered(), target=run_id).wait_until_complete()

        sdk(a.url)
        arun(write())
        end_run(b, run_id)

        assert all(outage["reported"].values()), outage["reported"]
        for reader in readers:
            assert reader.chunks() == list(range(len(written_at))), reader.name
            before_return = [
                when for when, number in reader.arrived if written_at[number] < outage["restored"]
            ]
            late = max(before_return) - outage["restored"]
            assert late < CAUGHT_UP_WITHIN, (
                f"{reader.name}: caught up {late:.2f} s after Redis returned"
            )
    finally:
        stop_all((a, b))
        redis.cut()
