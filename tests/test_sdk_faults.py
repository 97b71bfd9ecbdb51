"""The SDK through a flaky network: a TCP proxy between the SDK and the server that cuts every
open connection on demand, drops the server's acknowledgements, or stops accepting.

Writers must still store every chunk exactly once and in order; readers must still yield every
chunk exactly once and in order; and a server that stays unreachable must end a write with
StreamWriteError instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import HANG_GUARD, SECRET_KEY, ServerProcess, arun, end_run, within

import runstream._ws
import runstream.streams
import runstream.sync
from runstream import RunstreamError, StreamWriteError, TaskContext, configure, runs, streams, task
from runstream._ws import ChunkWriter, read_batches
from runstream.sync import streams as sync_streams

T = TypeVar("T")
CHUNKS = [f"chunk-{i:04d}" for i in range(2000)]


@task(id="sdk-tests.faults.never-claimed")
def never_claimed(payload: Any, ctx: TaskContext) -> None:
    raise AssertionError("no worker serves this task")


# -- the proxy ---------------------------------------------------------------------------------


def abort(sock: socket.socket) -> None:
    """Close a socket abruptly (RST), waking any thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Proxy:
    """A TCP proxy on 127.0.0.1:<free port> to the server, run by background threads.

    ``cut()`` drops every open connection at once, as a network failure would. With
    ``drop_acks``, a connection is cut the moment the server sends a writer's acknowledgement,
    which the client then never sees: the chunks are stored, but the writer does not know it.
    ``refuse()`` stops accepting connections: the server is unreachable. With
    ``silence_after_ack`` set to N, each of the next N connections goes silent towards the
    client at the server's first acknowledgement, while staying open: the server seems to have
    stopped answering.
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.drop_acks = False
        self.silence_after_ack = 0
        self.connections_silenced = 0
        self.connections = 0
        self.connections_cut = 0
        self.acks_dropped = 0
        self._open: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._lock = threading.Lock()
        self._refusing = threading.Event()
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        try:
            while not self._refusing.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                client.settimeout(None)
                try:
                    server = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    abort(client)
                    continue
                server.settimeout(None)
                with self._lock:
                    self.connections += 1
                    number = self.connections
                    self._open[number] = (client, server)
                for source, destination, to_client in (
                    (client, server, False),
                    (server, client, True),
                ):
                    threading.Thread(
                        target=self._pump,
                        args=(number, source, destination, to_client),
                        name=f"proxy-{number}",
                        daemon=True,
                    ).start()
        finally:
            self._listener.close()

    def _pump(
        self, number: int, source: socket.socket, destination: socket.socket, to_client: bool
    ) -> None:
        try:
            if not to_client and self.drop_acks:
                self._forward_request_without_compression(source, destination)
            silent = False
            while data := source.recv(65536):
                if to_client and self.drop_acks and b'"ack"' in data:
                    with self._lock:
                        self.acks_dropped += 1
                    break
                if to_client and not silent and b'"ack"' in data:
                    with self._lock:
                        silent = self.silence_after_ack > 0
                        if silent:
                            self.silence_after_ack -= 1
                            self.connections_silenced += 1
                if not silent:
                    destination.sendall(data)
        except OSError:
            pass
        self._drop(number)

    @staticmethod
    def _forward_request_without_compression(
        source: socket.socket, destination: socket.socket
    ) -> None:
        """Forward the HTTP upgrade request without its Sec-WebSocket-Extensions header, so that
        the server's frames stay uncompressed and its acknowledgements can be recognised."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = source.recv(65536)
            if not data:
                raise OSError("the client closed before its request was complete")
            head += data
        request, _, rest = head.partition(b"\r\n\r\n")
        lines = [
            line
            for line in request.split(b"\r\n")
            if not line.lower().startswith(b"sec-websocket-extensions:")
        ]
        destination.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + rest)

    def _drop(self, number: int) -> bool:
        with self._lock:
            pair = self._open.pop(number, None)
        if pair is None:
            return False
        for sock in pair:
            abort(sock)
        return True

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def cut(self) -> int:
        """Drop every open connection now; how many there were."""
        with self._lock:
            numbers = list(self._open)
        dropped = sum(self._drop(number) for number in numbers)
        with self._lock:
            self.connections_cut += dropped
        return dropped

    def cut_when_connected(self, settle: float = 0.03, timeout: float = 10.0) -> None:
        """Wait until a connection is open, let it work for ``settle`` seconds (past its
        handshake), then cut every open connection."""
        deadline = time.monotonic() + timeout
        while self.open_connections() == 0:
            if time.monotonic() > deadline:
                raise AssertionError("no connection came through the proxy")
            time.sleep(0.002)
        time.sleep(settle)
        self.cut()

    @contextlib.contextmanager
    def cutting_every(self, seconds: float) -> Iterator[None]:
        """Cut every open connection every ``seconds`` while the block runs."""
        stop = threading.Event()

        def cutter() -> None:
            while not stop.wait(seconds):
                self.cut()

        thread = threading.Thread(target=cutter, name="proxy-cutter", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def refuse(self) -> None:
        """Stop accepting connections and drop the open ones: the server is unreachable."""
        self._refusing.set()
        self._accepting.join()
        self.cut()

    def close(self) -> None:
        self.refuse()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[Proxy]:
    proxy = Proxy(server.url)
    yield proxy
    proxy.close()


@pytest.fixture(autouse=True)
def sdk_configured(server: ServerProcess) -> Iterator[None]:
    """Each test starts, and leaves the SDK, talking straight to the server."""
    configure(api_url=server.url, secret_key=SECRET_KEY)
    yield
    configure(api_url=server.url, secret_key=SECRET_KEY)


# -- helpers -----------------------------------------------------------------------------------


def queued_run(server: ServerProcess) -> str:
    """A run that stays QUEUED (no worker serves its task), triggered on the server directly."""
    configure(api_url=server.url, secret_key=SECRET_KEY)
    return never_claimed.trigger_sync().id


def stored(server: ServerProcess, run_id: str, key: str, *, timeout: int = 5) -> list[Any]:
    """Every chunk of a run stream, read straight from the server (not through the proxy)."""
    configure(api_url=server.url, secret_key=SECRET_KEY)

    async def read() -> list[Any]:
        stream = await streams.read(run_id, key, timeout_in_seconds=timeout)
        return [chunk async for chunk in stream]

    return arun(read())


def stream_state(server: ServerProcess, run_id: str, key: str) -> tuple[int, bool]:
    """``(chunk_count, closed)`` of a run stream, as the server reports it (0 and False while
    it does not exist)."""
    with server.client() as client:
        response = client.get(f"/api/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    for stream in response.json()["streams"]:
        if stream["key"] == key:
            return stream["chunk_count"], stream["closed"]
    return 0, False


def wait_for_chunks(server: ServerProcess, run_id: str, key: str, count: int) -> None:
    """Wait until the server holds at least ``count`` chunks of the stream."""
    deadline = time.monotonic() + HANG_GUARD
    while stream_state(server, run_id, key)[0] < count:
        assert time.monotonic() < deadline, f"the server never held {count} chunks of {key}"
        time.sleep(0.01)


# -- writers -----------------------------------------------------------------------------------


def test_a_pipe_whose_connections_keep_being_cut_stores_every_chunk_once_in_order_asyncio(
    server: ServerProcess, proxy: Proxy
) -> None:
    """2000 chunks piped through a proxy that cuts the writer's connection every 100 chunks and
    every 150 ms besides: ``wait_until_complete`` succeeds, and the server holds exactly the 2000
    chunks, in order, each once."""
    run_id = queued_run(server)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)

    async def source() -> AsyncIterator[str]:
        for i, chunk in enumerate(CHUNKS):
            if i % 100 == 50:
                await asyncio.to_thread(proxy.cut_when_connected)
            if i % 20 == 0:
                await asyncio.sleep(0.003)
            yield chunk

    async def scenario() -> list[str]:
        piped = streams.pipe("cut", source(), target=run_id)
        seen = [chunk async for chunk in piped.stream]
        await piped.wait_until_complete()
        return seen

    with proxy.cutting_every(0.15):
        seen = arun(scenario())
    end_run(server, run_id)

    assert seen == CHUNKS
    assert proxy.connections_cut >= 20
    assert stored(server, run_id, "cut") == CHUNKS
    assert stream_state(server, run_id, "cut") == (len(CHUNKS), True)


def test_a_pipe_whose_connections_keep_being_cut_stores_every_chunk_once_in_order_blocking(
    server: ServerProcess, proxy: Proxy
) -> None:
    """The same with ``runstream.sync`` and a plain generator as the source."""
    run_id = queued_run(server)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)

    def source() -> Iterator[str]:
        for i, chunk in enumerate(CHUNKS):
            if i % 100 == 50:
                proxy.cut_when_connected()
            if i % 20 == 0:
                time.sleep(0.003)
            yield chunk

    with proxy.cutting_every(0.15):
        within(
            HANG_GUARD,
            lambda: sync_streams.pipe("cut", source(), target=run_id).wait_until_complete(),
        )
    end_run(server, run_id)

    assert proxy.connections_cut >= 20
    assert stored(server, run_id, "cut") == CHUNKS
    assert stream_state(server, run_id, "cut") == (len(CHUNKS), True)


def test_a_writer_that_never_hears_its_acknowledgements_stores_each_chunk_once(
    server: ServerProcess, proxy: Proxy
) -> None:
    """Every connection is cut the moment the server acknowledges a frame: the chunks are
    stored but the writer does not know. On reconnecting it learns what is stored and resends
    only the rest, so nothing is stored twice."""
    run_id = queued_run(server)
    chunks = [f"c{i}" for i in range(300)]
    proxy.drop_acks = True
    configure(api_url=proxy.url, secret_key=SECRET_KEY)

    async def source() -> AsyncIterator[str]:
        for i, chunk in enumerate(chunks):
            if i % 10 == 0:
                await asyncio.sleep(0.005)
            yield chunk

    async def scenario() -> None:
        await streams.pipe("acks", source(), target=run_id).wait_until_complete()
        await streams.append("acks", "appended", target=run_id)
        written = streams.writer(
            "acks", execute=lambda w: (w.write("written"), w.merge(["m1", "m2"])), target=run_id
        )
        await written.wait_until_complete()

    arun(scenario())
    end_run(server, run_id)

    assert proxy.acks_dropped >= 3
    assert stored(server, run_id, "acks") == [*chunks, "appended", "written", "m1", "m2"]


def test_a_writer_whose_server_stops_answering_reconnects_and_stores_each_chunk_once(
    server: ServerProcess, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three connections in turn go silent after the server's first acknowledgement, staying
    open (pings unanswered, nothing closed): the writer does not wait forever; after the reply
    timeout it reconnects, learns what was stored, and stores every chunk exactly once."""
    monkeypatch.setattr(runstream._ws, "REPLY_TIMEOUT", 1.0)
    run_id = queued_run(server)
    chunks = [f"s{i}" for i in range(200)]
    proxy.silence_after_ack = 3
    configure(api_url=proxy.url, secret_key=SECRET_KEY)

    async def source() -> AsyncIterator[str]:  # over about 4 s: longer than three timeouts
        for i, chunk in enumerate(chunks):
            if i % 5 == 0:
                await asyncio.sleep(0.1)
            yield chunk

    async def scenario() -> None:
        await streams.pipe("silent", source(), target=run_id).wait_until_complete()

    arun(scenario())
    end_run(server, run_id)

    assert proxy.connections_silenced == 3
    assert stored(server, run_id, "silent") == chunks


# -- readers -----------------------------------------------------------------------------------


def test_a_reader_whose_connections_keep_being_cut_yields_every_chunk_once_in_order(
    server: ServerProcess, proxy: Proxy
) -> None:
    """A reader through the proxy while a writer (straight to the server) pipes 2000 chunks;
    the proxy cuts the reader's connection every 100 chunks it yields and every 100 ms besides.
    The reader resumes each time after the last chunk it yielded: every chunk, once, in order,
    and then the end of the stream."""
    run_id = queued_run(server)

    async def source() -> AsyncIterator[str]:
        for i, chunk in enumerate(CHUNKS):
            if i % 25 == 0:
                await asyncio.sleep(0.003)
            yield chunk

    async def finish(piped: runstream.StreamHandle[str]) -> None:
        await piped.wait_until_complete()
        await asyncio.to_thread(end_run, server, run_id)

    async def scenario() -> tuple[list[Any], int]:
        # The writer is made while the SDK points at the server, the reader while it points
        # at the proxy: each keeps the settings it was made with.
        configure(api_url=server.url, secret_key=SECRET_KEY)
        piped = streams.pipe("live", source(), target=run_id)
        ending = asyncio.create_task(finish(piped))
        configure(api_url=proxy.url, secret_key=SECRET_KEY)
        stream = await streams.read(run_id, "live", timeout_in_seconds=30)
        received: list[Any] = []
        async for chunk in stream:
            received.append(chunk)
            if len(received) % 100 == 0:
                proxy.cut()
        await ending
        return received, stream.next_index

    with proxy.cutting_every(0.1):
        received, next_index = arun(scenario())

    assert received == CHUNKS
    assert next_index == len(CHUNKS)
    assert proxy.connections > 1
    assert stream_state(server, run_id, "live") == (len(CHUNKS), True)


def test_a_read_timeout_holds_however_often_the_connection_is_cut(
    server: ServerProcess, proxy: Proxy
) -> None:
    """``timeout_in_seconds`` is the reader's promise: with its connection cut every 0.3 s,
    a read with a 3-second timeout still ends within 5 s of the last chunk, with every chunk
    once (each reconnection asks the server only for what is left of the timeout)."""
    run_id = queued_run(server)
    chunks = [f"c{n}" for n in range(20)]

    async def scenario() -> tuple[list[Any], float, bool]:
        configure(api_url=server.url, secret_key=SECRET_KEY)
        piped = streams.pipe("timed", chunks, target=run_id)
        await piped.wait_until_complete()
        configure(api_url=proxy.url, secret_key=SECRET_KEY)
        stream = await streams.read(run_id, "timed", timeout_in_seconds=3)
        received: list[Any] = []
        last_chunk_at = time.monotonic()
        async for chunk in stream:
            received.append(chunk)
            last_chunk_at = time.monotonic()
        return received, time.monotonic() - last_chunk_at, stream.ended

    with proxy.cutting_every(0.3):
        received, quiet_for, ended = arun(scenario())

    assert received == chunks
    assert 3 <= quiet_for <= 5
    assert ended is False  # it timed out: the run and its stream go on
    assert proxy.connections > 5


def test_a_blocking_reader_whose_connections_are_cut_yields_every_stored_chunk_once(
    server: ServerProcess, proxy: Proxy
) -> None:
    """``runstream.sync`` reading a stored, ended stream from ``start_index`` through a proxy that
    cuts the connection as each chunk arrives: every chunk from the start index, once, in
    order."""
    run_id = queued_run(server)
    chunks = [f"s{i}" for i in range(40)]
    sync_streams.pipe("stored", chunks, target=run_id).wait_until_complete()
    end_run(server, run_id)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)

    def read() -> list[Any]:
        received = []
        for chunk in sync_streams.read(run_id, "stored", start_index=5, timeout_in_seconds=10):
            received.append(chunk)
            proxy.cut()
        return received

    assert within(HANG_GUARD, read) == chunks[5:]


# -- an unreachable server ---------------------------------------------------------------------


@pytest.fixture
def quick_give_up(monkeypatch: pytest.MonkeyPatch) -> float:
    """Writers and readers give up after 0.5 s of an unreachable server instead of 30 s.

    (``runstream._ws.GIVE_UP_AFTER`` is bound as a default argument when the module loads, so
    patching it changes nothing: the SDK's use of ChunkWriter and read_batches is patched.)
    """
    seconds = 0.5
    monkeypatch.setattr(
        runstream.streams, "ChunkWriter", functools.partial(ChunkWriter, give_up_after=seconds)
    )
    monkeypatch.setattr(
        runstream.streams, "read_batches", functools.partial(read_batches, give_up_after=seconds)
    )
    return seconds


def test_a_pipe_to_an_unreachable_server_ends_with_stream_write_error(
    server: ServerProcess, proxy: Proxy, quick_give_up: float
) -> None:
    """When no connection gets through for ``give_up_after`` seconds, ``wait_until_complete``
    raises StreamWriteError saying the server was unreachable, in both faces; so does
    ``append``."""
    run_id = queued_run(server)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)
    proxy.refuse()

    async def scenario() -> None:
        piped = streams.pipe("unreachable", ["a", "b"], target=run_id)
        assert [chunk async for chunk in piped.stream] == ["a", "b"]
        with pytest.raises(StreamWriteError, match="unreachable"):
            await piped.wait_until_complete()
        with pytest.raises(StreamWriteError, match="unreachable"):
            await streams.append("unreachable", "c", target=run_id)

    arun(scenario())
    with pytest.raises(StreamWriteError, match="unreachable"):
        within(
            HANG_GUARD,
            lambda: sync_streams.pipe("unreachable", ["a"], target=run_id).wait_until_complete(),
        )
    end_run(server, run_id)


def test_a_pipe_that_loses_the_server_midway_keeps_what_was_acknowledged(
    server: ServerProcess, proxy: Proxy, quick_give_up: float
) -> None:
    """The server becomes unreachable halfway through a pipe: ``wait_until_complete`` raises
    StreamWriteError, and what reached the server is a prefix of the chunks, each once."""
    run_id = queued_run(server)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)
    chunks = [f"p{i}" for i in range(200)]

    async def source() -> AsyncIterator[str]:
        for i, chunk in enumerate(chunks):
            if i == 100:
                await asyncio.to_thread(wait_for_chunks, server, run_id, "midway", 100)
                await asyncio.to_thread(proxy.refuse)
            yield chunk

    async def scenario() -> None:
        with pytest.raises(StreamWriteError, match="unreachable"):
            await streams.pipe("midway", source(), target=run_id).wait_until_complete()

    arun(scenario())
    end_run(server, run_id)

    # The writer that gave up never said it was done, so the stream stays open (until the
    # server's writer timeout): the read ends by its own timeout.
    kept = stored(server, run_id, "midway", timeout=1)
    assert kept == chunks[: len(kept)]
    assert len(kept) >= 100


def test_a_reader_of_an_unreachable_server_raises_runstream_error(
    server: ServerProcess, proxy: Proxy, quick_give_up: float
) -> None:
    """A reader that cannot reach the server for ``give_up_after`` seconds raises
    RunstreamError (it does not end quietly, as if the stream had ended)."""
    run_id = queued_run(server)
    configure(api_url=proxy.url, secret_key=SECRET_KEY)
    proxy.refuse()

    async def scenario() -> None:
        stream = await streams.read(run_id, "anything", timeout_in_seconds=5)
        with pytest.raises(RunstreamError, match="unreachable"):
            async for _ in stream:
                pass

    arun(scenario())
    end_run(server, run_id)


def test_the_runs_api_through_the_proxy_works(server: ServerProcess, proxy: Proxy) -> None:
    """Sanity check of the proxy itself: plain HTTP goes through it."""
    run_id = queued_run(server)
    response = httpx.get(
        f"{proxy.url}/api/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["status"] == "QUEUED"
    configure(api_url=proxy.url, secret_key=SECRET_KEY)
    assert arun(runs.retrieve(run_id)).status == "QUEUED"
    end_run(server, run_id)
