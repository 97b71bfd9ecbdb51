"""Faults and crashes under load: SDK writers keep their promise of exactly once, in order.

- Through a fault-injecting TCP proxy that, over and over, drops connections (both directions
  at once, RST), delays everything it forwards, or stalls a connection (forwards nothing, in
  either direction, while keeping it open: a half-open connection, noticed only by the SDK's
  reply timeout), four SDK writers pipe at least 10,000 chunks in all through at least 50
  faults; every stream then reads back exactly the chunks written, each once, in order.
- While several SDK writers write fast, the server (gunicorn arbiter and worker) is killed with
  SIGKILL, two or three times, and restarted on the same instance folder or PostgreSQL database
  and the same port; the writers reconnect by themselves to the same URL, resume and finish, and
  every stream reads back exactly the chunks written, each once, in order. On SQLite and on
  PostgreSQL (skipped without RUNSTREAM_TEST_DATABASE_URL).

The SDK's reply timeout (``runstream._ws.REPLY_TIMEOUT``, 30 s) is neither a setting nor an
environment variable: the stall test lowers it by patching the module, as test_sdk_faults.py
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import (
    POSTGRES_URL,
    SECRET_KEY,
    ServerProcess,
    arun,
    end_run,
    free_port,
    queued_run,
    reset_postgres,
    start_server,
)

import runstream._config
import runstream._ws
from runstream import configure, streams
from runstream.server.db import make_engine

# The fault proxy test.
FAULT_WRITERS = 4
FAULT_CHUNKS = 10_000  # at least, over all writers
FAULTS = 50  # at least
FAULT_EVERY = 0.2  # seconds between faults
DELAY = 0.15  # added to every forwarded piece during a delay fault
DELAY_FOR = 0.6
REPLY_TIMEOUT = 1.0  # instead of the SDK's 30 s, so that stalls are noticed quickly
# The crash test.
CRASH_WRITERS = 4
KILLS = 3
KILL_EVERY = 2.0  # seconds of writing between a restart and the next kill
AFTER_LAST_KILL = 1.5  # seconds of writing after the last restart
HANG_GUARD = 120.0


# -- the fault proxy ---------------------------------------------------------------------------


def abort(sock: socket.socket) -> None:
    """Close a socket abruptly (RST), waking any thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Connection:
    """One proxied connection: the client's socket, the server's, and whether it is stalled."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.stalled = False
        self.stalled_at = 0.0
        self.opened = time.monotonic()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to a server, injecting faults on demand.

    ``drop()`` aborts every open connection in both directions at once; ``delay(seconds,
    lasting)`` holds every piece forwarded either way for ``seconds``, for ``lasting`` seconds;
    ``stall()`` makes the newest open connections black holes: what either side sends is
    swallowed, nothing is closed, so only the client's own timeout can notice. A stalled
    connection the client closes counts in :attr:`stalls_noticed`, one the server closes
    first in :attr:`stalls_ended_by_server`.
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: dict[int, Connection] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._delay_until = 0.0
        self._delay = 0.0
        self.connections = 0
        self.drops = self.delays = self.stalls = 0
        self.connections_dropped = 0
        self.stalls_noticed = 0
        self.stalls_ended_by_server = 0
        self.stalls_noticed_after: list[float] = []  # seconds from each stall to its notice
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                abort(client)
                continue
            server.settimeout(None)
            connection = Connection(client, server)
            with self._lock:
                number = next(self._numbers)
                self._open[number] = connection
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(number, connection, source, sink), daemon=True
                ).start()

    def _pump(
        self, number: int, connection: Connection, source: socket.socket, sink: socket.socket
    ) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if connection.stalled:
                    continue  # swallowed: nothing forwarded, nothing closed
                if time.monotonic() < self._delay_until:
                    time.sleep(self._delay)
                sink.sendall(data)
        with self._lock:
            gone = self._open.pop(number, None)
            if gone is not None and gone.stalled:
                if source is connection.client:
                    self.stalls_noticed += 1  # the client gave up on the stalled connection
                    self.stalls_noticed_after.append(time.monotonic() - gone.stalled_at)
                else:
                    self.stalls_ended_by_server += 1
        abort(connection.client)
        abort(connection.server)

    def drop(self) -> int:
        """Abort every open connection now (both directions); how many there were."""
        with self._lock:
            dropping = [c for c in self._open.values() if not c.stalled]
            self.drops += bool(dropping)
            self.connections_dropped += len(dropping)
        for connection in dropping:
            abort(connection.client)
            abort(connection.server)
        return len(dropping)

    def delay(self, seconds: float, lasting: float) -> None:
        """Hold every forwarded piece for ``seconds``, for the next ``lasting`` seconds."""
        with self._lock:
            self._delay = seconds
            self._delay_until = time.monotonic() + lasting
            self.delays += 1

    def stall(self, count: int = 1) -> int:
        """Black-hole the ``count`` newest open connections; how many were stalled."""
        with self._lock:
            newest = sorted(
                (c for c in self._open.values() if not c.stalled),
                key=lambda c: c.opened,
                reverse=True,
            )[:count]
            for connection in newest:
                connection.stalled = True
                connection.stalled_at = time.monotonic()
            self.stalls += len(newest)
        return len(newest)

    def stalled_open(self) -> int:
        with self._lock:
            return sum(c.stalled for c in self._open.values())

    @property
    def faults(self) -> int:
        return self.drops + self.delays + self.stalls

    def wait_for_connection(self, timeout: float = 2.0) -> bool:
        """Wait until a connection that is not stalled has been open for 50 ms (past its
        handshake); whether one was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                now = time.monotonic()
                if any(not c.stalled and now - c.opened > 0.05 for c in self._open.values()):
                    return True
            time.sleep(0.005)
        return False

    @contextlib.contextmanager
    def injecting(self, every: float, no_more_stalls: threading.Event) -> Iterator[None]:
        """While the block runs, a fault every ``every`` seconds, in a cycle of eight: five
        drops, two delays and a stall (a drop instead once ``no_more_stalls`` is set: a writer
        that has sent everything has no reply to wait for, so nothing to notice a stall by).
        Drops and stalls wait for an open connection to hit, so that each one breaks
        something."""
        stop = threading.Event()
        kinds = ("drop", "delay", "drop", "drop", "delay", "drop", "drop", "stall")

        def inject() -> None:
            for kind in itertools.cycle(kinds):
                if stop.wait(every):
                    return
                if kind == "delay":
                    self.delay(DELAY, DELAY_FOR)
                elif self.wait_for_connection():
                    if kind == "stall" and not no_more_stalls.is_set():
                        self.stall()
                    else:
                        self.drop()

        thread = threading.Thread(target=inject, name="fault-injector", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test may point the SDK anywhere: it is put back as it was afterwards."""
    monkeypatch.setattr(runstream._config, "_configured", runstream._config._configured)
    yield


def stored(url: str, run_id: str, key: str) -> list[Any]:
    """Every chunk of a run stream, read by the SDK straight from the server to its end."""
    configure(api_url=url, secret_key=SECRET_KEY)

    async def read() -> list[Any]:
        stream = await streams.read(run_id, key, timeout_in_seconds=10)
        chunks = [chunk async for chunk in stream]
        assert stream.ended, f"{key}: the stream did not end"
        return chunks

    return arun(read())


# -- through the fault proxy -------------------------------------------------------------------


def test_writers_through_drops_delays_and_stalls_store_every_chunk_once_in_order(
    server: ServerProcess, sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four SDK writers pipe numbered chunks (up to 200 a second each) to four streams of a
    run through a proxy that, every 0.2 s or so, drops every open connection, delays everything
    by 150 ms for 0.6 s, or stalls the newest connection (a black hole, kept open): five drops,
    two delays and a stall in every eight faults. They go on until at least 10,000 chunks and
    50 faults are done. Every pipe completes; every stalled connection was given up by the SDK
    itself (its reply timeout, lowered to 1 s); and every stream reads back exactly the chunks
    written, each once, in order."""
    monkeypatch.setattr(runstream._ws, "REPLY_TIMEOUT", REPLY_TIMEOUT)
    keys = [f"w{number}" for number in range(FAULT_WRITERS)]
    run_id = queued_run(server, keys, task="faults")
    proxy = FaultProxy(server.url)
    written: dict[str, list[int]] = {key: [] for key in keys}
    each = FAULT_CHUNKS // FAULT_WRITERS
    finishing = threading.Event()

    async def numbered(key: str) -> AsyncIterator[int]:
        for number in itertools.count():
            if number >= each and proxy.faults >= FAULTS:
                finishing.set()
                return
            written[key].append(number)
            yield number
            if number % 10 == 9:
                await asyncio.sleep(0.05)

    async def write() -> None:
        configure(api_url=proxy.url, secret_key=SECRET_KEY)
        pipes = [streams.pipe(key, numbered(key), target=run_id) for key in keys]
        await asyncio.gather(*(piped.wait_until_complete() for piped in pipes))

    started = time.monotonic()
    try:
        with proxy.injecting(FAULT_EVERY, finishing):
            asyncio.run(asyncio.wait_for(write(), HANG_GUARD))
        writing = time.monotonic() - started
        deadline = time.monotonic() + 5  # the proxy's threads see the SDK's aborts a bit later
        while proxy.stalled_open() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proxy.close()
    end_run(server, run_id)

    total = sum(len(chunks) for chunks in written.values())
    noticed = proxy.stalls_noticed_after or [0.0]
    print(
        f"\n{total} chunks in {writing:.1f} s through {proxy.faults} faults: "
        f"{proxy.drops} drops ({proxy.connections_dropped} connections), {proxy.delays} delays, "
        f"{proxy.stalls} stalls ({proxy.stalls_noticed} given up by the SDK, after "
        f"{min(noticed):.1f} to {max(noticed):.1f} s, {proxy.stalls_ended_by_server} ended by "
        f"the server); {proxy.connections} connections"
    )
    assert total >= FAULT_CHUNKS
    assert proxy.faults >= FAULTS
    assert proxy.drops >= 25 and proxy.delays >= 5 and proxy.stalls >= 4
    assert proxy.stalls_noticed == proxy.stalls  # the SDK gave up on every stalled connection
    for key in keys:
        assert stored(server.url, run_id, key) == written[key], key


# -- kill -9 of the server ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's environment for its database: its instance folder's SQLite file, or the
    PostgreSQL test database (emptied: the server migrates it as it starts)."""
    if request.param == "sqlite":
        return {}
    if not POSTGRES_URL:
        pytest.skip("set RUNSTREAM_TEST_DATABASE_URL to a PostgreSQL database to run this")
    engine = make_engine(POSTGRES_URL)
    reset_postgres(engine)
    engine.dispose()
    return {"RUNSTREAM_DATABASE_URL": POSTGRES_URL}


def test_writers_resume_after_kill_9_of_the_server_and_store_every_chunk_once_in_order(
    tmp_path: Path, database_env: dict[str, str], sdk: None
) -> None:
    """Four SDK writers pipe numbered chunks as fast as about 1,000 a second each to four
    streams of a run. Three times, after 2 s of writing, the server is killed with SIGKILL and
    started again on the same database and port. The writers, never told, reconnect to the same
    URL, learn from the server which of their chunks are stored, resend only the rest, and
    finish: every stream reads back exactly the chunks written, each once, in order."""
    port = free_port()
    server = start_server(tmp_path, env=database_env, port=port)
    servers = [server]
    keys = [f"w{number}" for number in range(CRASH_WRITERS)]
    written: dict[str, list[int]] = {key: [] for key in keys}
    at_kill: list[int] = []
    done = threading.Event()

    def killer() -> None:
        for _ in range(KILLS):
            time.sleep(KILL_EVERY)
            at_kill.append(sum(len(chunks) for chunks in written.values()))
            servers[-1].kill()
            servers.append(start_server(tmp_path, env=database_env, port=port))
        time.sleep(AFTER_LAST_KILL)
        done.set()

    async def numbered(key: str) -> AsyncIterator[int]:
        for number in itertools.count():
            if done.is_set():
                return
            written[key].append(number)
            yield number
            if number % 10 == 9:
                await asyncio.sleep(0.01)

    async def write() -> None:
        configure(api_url=server.url, secret_key=SECRET_KEY)
        pipes = [streams.pipe(key, numbered(key), target=run_id) for key in keys]
        await asyncio.gather(*(piped.wait_until_complete() for piped in pipes))

    try:
        run_id = queued_run(server, keys, task="faults")
        killing = threading.Thread(target=killer, daemon=True)
        started = time.monotonic()
        killing.start()
        asyncio.run(asyncio.wait_for(write(), HANG_GUARD))
        killing.join(30)
        assert not killing.is_alive()
        took = time.monotonic() - started
        end_run(server, run_id)
        total = sum(len(chunks) for chunks in written.values())
        print(f"\n{total} chunks in {took:.1f} s, {KILLS} kills (at {at_kill} chunks written)")
        assert len(servers) == KILLS + 1
        assert at_kill[0] > 0 and total > at_kill[-1]
        for key in keys:
            assert stored(server.url, run_id, key) == written[key], key
    finally:
        servers[-1].stop()
