"""Connections at scale, over real sockets: live readers cannot starve short requests, slow
clients cannot hold the server, and a reader whose client has gone gives its place back.

The server of this module has a small live budget (RUNSTREAM_MAX_LIVE_READERS) and short
header and body timeouts, so that what a busy server does happens here in seconds.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pytest
from conftest import SECRET_KEY, ServerProcess, start_server

BUDGET = 20
HEADER_TIMEOUT = 1
BODY_TIMEOUT = 1
# Long enough that an admitted long-poll is still waiting when the test looks at it.
LONG_POLL_TIMEOUT = 30
# How long a refused reader may wait for its refusal, and a short request for its answer.
PROMPT = 1.0


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("busy"),
        env={
            "RUNSTREAM_MAX_LIVE_READERS": str(BUDGET),
            "RUNSTREAM_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "RUNSTREAM_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "RUNSTREAM_LONG_POLL_TIMEOUT": str(LONG_POLL_TIMEOUT),
        },
    )
    yield server
    server.stop()


@dataclass
class Run:
    id: str
    token: str
    key: str = "live"

    @property
    def stream_path(self) -> str:
        return f"/v1/stream/runs/{self.id}/{self.key}"


@pytest.fixture
def run(busy_server: ServerProcess) -> Run:
    """A run whose stream "live" holds one chunk; readers use its public access token."""
    with busy_server.client() as client:
        answer = client.post(f"/api/v1/tasks/connections-{os.urandom(4).hex()}/trigger", json={})
        assert answer.status_code == 201, answer.text
        created = Run(answer.json()["id"], answer.json()["public_access_token"])
        appended = client.post(
            created.stream_path, content=b'["first"]', headers={"Content-Type": "application/json"}
        )
        assert appended.status_code in (200, 204), appended.text
    return created


# -- raw clients: a live reader is a socket that has sent its request --------------------------


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def send_request(server: ServerProcess, target: str, extra: str = "") -> socket.socket:
    sock = connect(server)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode())
    return sock


def long_poll(server: ServerProcess, run: Run) -> socket.socket:
    return send_request(server, f"{run.stream_path}?offset=now&live=long-poll&token={run.token}")


def sse(server: ServerProcess, run: Run) -> socket.socket:
    return send_request(server, f"{run.stream_path}?offset=now&live=sse&token={run.token}")


def websocket(server: ServerProcess, run: Run) -> socket.socket:
    key = base64.b64encode(os.urandom(16)).decode()
    return send_request(
        server,
        f"/realtime/v2/streams/{run.id}/{run.key}?start_index=1&timeout_in_seconds=600",
        f"Authorization: Bearer {run.token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
    )


READERS = {"long-poll": long_poll, "sse": sse, "websocket": websocket}


def answers_within(
    sockets: list[socket.socket], seconds: float, until: bytes | None = None
) -> list[bytes]:
    """What the server sent each socket within ``seconds`` (b"" if nothing), all watched at
    once: a refusal comes at once, while an admitted reader hears nothing until there is news
    (an SSE reader: its response's head). With ``until``, each socket is watched until that
    appears in what it received."""
    received = {sock: b"" for sock in sockets}
    done = answered if until is None else lambda data: until in data
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                sock = cast(socket.socket, key.fileobj)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                received[sock] += data
                if not data or done(received[sock]):
                    selector.unregister(sock)
    return [received[sock] for sock in sockets]


def answered(received: bytes) -> bool:
    """A refusal, or a head that is not a websocket's (an SSE response, a long-poll's answer)."""
    head_done = b"\r\n\r\n" in received
    return refusal_of(received) is not None or (head_done and b" 101 " not in received)


def answer_within(sock: socket.socket, seconds: float) -> bytes:
    return answers_within([sock], seconds)[0]


def refusal_of(received: bytes) -> str | None:
    """How the server refused a reader: "503" (with Retry-After), "1013", or None."""
    if received.startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 2\r\n" in received.lower():
        return "503"
    head, _, frames = received.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 101") and frames[:1] == b"\x88" and len(frames) >= 4:
        (code,) = struct.unpack("!H", frames[2:4])
        return str(code)
    return None


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def timed(call: object) -> float:
    started = time.monotonic()
    assert callable(call)
    call()
    return time.monotonic() - started


def budget_is_free(server: ServerProcess, run: Run, seconds: float = 5.0) -> bool:
    """True once a new long-poll is admitted (no refusal within half a second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probe = long_poll(server, run)
        try:
            if refusal_of(answer_within(probe, 0.5)) is None:
                return True
        finally:
            probe.close()
    return False


# -- tests -------------------------------------------------------------------------------------


def test_ten_times_the_live_budget_of_readers_never_delay_an_append_or_a_read(
    busy_server: ServerProcess, run: Run
) -> None:
    """200 public-token readers (long-poll, SSE, websocket) at a server that holds 20: the
    first 20 wait live, every other one is refused at once (503 with Retry-After, or websocket
    close 1013), and meanwhile an append and a read are answered as fast as ever. The 20 then
    receive the appended chunk."""
    kinds = list(READERS)
    readers: list[tuple[str, socket.socket]] = []
    try:
        for number in range(10 * BUDGET):
            kind = kinds[number % len(kinds)]
            readers.append((kind, READERS[kind](busy_server, run)))
        answers = answers_within([sock for _, sock in readers], PROMPT)
        refusals = [refusal_of(answer) for answer in answers]
        admitted = [readers[i] for i, refusal in enumerate(refusals) if refusal is None]
        assert len(admitted) == BUDGET, [answers[i][:80] for i, r in enumerate(refusals) if not r]
        for (kind, _), refusal in zip(readers, refusals, strict=True):
            assert refusal in (None, "1013" if kind == "websocket" else "503")

        with busy_server.client() as client:
            append_seconds = timed(
                lambda: client.post(
                    run.stream_path,
                    content=b'["news"]',
                    headers={"Content-Type": "application/json"},
                ).raise_for_status()
            )
            read_seconds = timed(
                lambda: client.get(run.stream_path, params={"offset": "-1"}).raise_for_status()
            )
        assert append_seconds < PROMPT and read_seconds < PROMPT, (append_seconds, read_seconds)
        news = answers_within([sock for _, sock in admitted], 10, until=b"news")
        missed = [kind for (kind, _), got in zip(admitted, news, strict=True) if b"news" not in got]
        assert not missed, f"admitted readers missed the chunk: {missed}"
    finally:
        close_all([sock for _, sock in readers])
    assert budget_is_free(busy_server, run), "the readers' places did not come back"


@pytest.mark.parametrize("kind", list(READERS))
def test_a_reader_whose_client_disconnected_frees_its_place_within_seconds(
    busy_server: ServerProcess, run: Run, kind: str
) -> None:
    """With the budget full, one reader's client goes away without a word (its socket closed,
    no close frame): its place is free again within 5 seconds, long before the long-poll's
    30 s timeout or the next keep-alive."""
    readers = [READERS[kind](busy_server, run) for _ in range(BUDGET)]
    try:
        assert all(refusal_of(answer) is None for answer in answers_within(readers, 0.3))
        assert refusal_of(answer_within(long_poll(busy_server, run), PROMPT)) == "503"
        readers.pop().close()
        assert budget_is_free(busy_server, run, seconds=5.0)
    finally:
        close_all(readers)


def test_connections_that_never_finish_their_headers_are_dropped_and_delay_nothing(
    busy_server: ServerProcess,
) -> None:
    """200 connections send a header line every 0.3 s and never end their headers (no
    credential needed): normal requests beside them are answered at once, and the server drops
    each slow connection after its header timeout."""
    slow = [connect(busy_server) for _ in range(200)]
    for sock in slow:
        sock.sendall(b"GET /v1/stream/slow HTTP/1.1\r\nHost: test\r\n")
    started = time.monotonic()
    dropped: set[int] = set()
    slowest_request = 0.0
    with busy_server.client() as client:
        while len(dropped) < len(slow) and time.monotonic() - started < HEADER_TIMEOUT + 10:
            slowest_request = max(
                slowest_request, timed(lambda: client.head("/v1/stream/__health__"))
            )
            for number, sock in enumerate(slow):
                if number in dropped:
                    continue
                try:
                    sock.sendall(b"X-Slow: still-here\r\n")
                    sock.settimeout(0.001)
                    if sock.recv(1) == b"":
                        dropped.add(number)
                except TimeoutError:
                    pass
                except OSError:
                    dropped.add(number)
            time.sleep(0.3)
    close_all(slow)
    assert slowest_request < PROMPT, slowest_request
    assert len(dropped) == len(slow), f"{len(slow) - len(dropped)} slow connections were kept"
    assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_a_body_that_does_not_arrive_in_time_is_refused_with_408_and_nothing_stored(
    busy_server: ServerProcess, run: Run
) -> None:
    sock = connect(busy_server)
    sock.sendall(
        f"POST {run.stream_path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {SECRET_KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 20\r\n\r\n["par'.encode()
    )
    answer = answers_within([sock], BODY_TIMEOUT + 5, until=b"seconds")[0]
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1 seconds" in answer
    with busy_server.client() as client:
        assert client.get(run.stream_path, params={"offset": "-1"}).json() == ["first"]
