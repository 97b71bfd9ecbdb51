"""Websocket fuzzing against one real `runstream serve`: malformed, oversized, binary,
out-of-order and flooding frames on the run-stream reader, the writer and the dashboard's view.

Every case asserts that the server ends the connection with a close frame whose code is not
1011 (an error inside the server), within :data:`CLOSE_WITHIN` seconds, with a reason where the
protocol promises one (docs/websocket-protocol.md: "Every close carries a reason"), and that the
server is still healthy afterwards (a normal writer and reader still work).

Protocol violations below the application (RFC 6455 section 5: unmasked client frames, reserved
bits, unknown opcodes, fragmented or oversized control frames, a continuation with nothing to
continue; section 8.1: invalid UTF-8 in a text message) are where the RFC says the server
"MUST _Fail the WebSocket Connection_" (section 7.1.7): it may send a close frame first, and
wsproto does: 1002 (protocol error) or 1007 (invalid payload data). The tests insist on that
close frame; an abrupt drop would be allowed by the RFC there, but this server does better.

Frames are built by hand on a raw socket (:class:`RawSocket`), so that anything a client could
send can be sent, and what comes back (close frame, EOF or reset) is seen exactly.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# How long the server may take to close a connection it refuses.
CLOSE_WITHIN = 10.0
# simple-websocket's max_message_size on every route: RUNSTREAM_MAX_APPEND_BYTES (16 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How much the worker's resident memory may grow while a client floods it.
FLOOD_MEMORY_BOUND_KIB = 100 * 1024
# How fast the server must answer a health check while it is being flooded.
HEALTHY_WITHIN = 3.0
FLOOD_FRAMES = 20_000
# A view's events are each delivered on the process's event loop (about 5,000 a second here),
# and ReactPy logs each one that has no handler.
DASHBOARD_FLOOD_FRAMES = 5_000

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9
CLOSE_INTERNAL_ERROR = 1011
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009


# -- a raw websocket client --------------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared_length: int | None = None,
    mask_key: bytes | None = None,
) -> bytes:
    """One websocket frame as a client sends it, every field settable, even to wrong values."""
    length = len(payload) if declared_length is None else declared_length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4) if mask_key is None else mask_key
    if key == b"\0\0\0\0":
        return head + key + payload  # masking with zeros leaves the payload as it is
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked_payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )
    return head + key + masked_payload


def text(data: str | bytes) -> bytes:
    return frame(OP_TEXT, data.encode() if isinstance(data, str) else data)


@dataclass
class Outcome:
    """How the server ended a raw connection: its close frame's code and reason (None when the
    connection ended without one), the text messages before it, and whether it was reset."""

    code: int | None = None
    reason: str | None = None
    messages: list[str] = field(default_factory=list)
    reset: bool = False
    seconds: float = 0.0


class RawSocket:
    """A websocket connection on a plain socket: the HTTP upgrade, then whatever bytes the test
    writes, and the server's frames parsed as they come."""

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.sock = socket.create_connection((host, port), timeout=CLOSE_WITHIN)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            data = self.sock.recv(65536)
            assert data, f"the server ended the handshake: {self._buffer!r}"
            self._buffer += data
        response, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        assert response.startswith(b"HTTP/1.1 101"), response

    def send(self, data: bytes) -> bool:
        """Write bytes; False if the server already ended the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _read(self, count: int, deadline: float) -> bytes:
        while len(self._buffer) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError
            self._buffer += data
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def next_frame(self, deadline: float) -> tuple[int, bytes]:
        first, second = self._read(2, deadline)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8, deadline))
        assert not second & 0x80, "a server's frames are never masked"
        return first & 0xF, self._read(length, deadline)

    def receive_text(self, timeout: float = CLOSE_WITHIN) -> str:
        """The next text message (pings are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.next_frame(deadline)
            if opcode == OP_TEXT:
                return payload.decode()
            assert opcode in (0x9, 0xA), (opcode, payload)

    def outcome(self, timeout: float = CLOSE_WITHIN) -> Outcome:
        """Read until the server's close frame (answered, as RFC 6455 has it), EOF or reset."""
        start = time.monotonic()
        deadline = start + timeout
        result = Outcome()
        try:
            while True:
                opcode, payload = self.next_frame(deadline)
                if opcode == OP_TEXT:
                    result.messages.append(payload.decode())
                elif opcode == OP_CLOSE:
                    if len(payload) >= 2:
                        (result.code,) = struct.unpack("!H", payload[:2])
                        result.reason = payload[2:].decode()
                    else:
                        result.code = 1005
                    self.send(frame(OP_CLOSE, payload[:2]))
                    break
        except ConnectionResetError:
            result.reset = True
        except (EOFError, BrokenPipeError):
            pass
        except TimeoutError:
            raise AssertionError(f"the server did not close within {timeout} seconds") from None
        result.seconds = time.monotonic() - start
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the server and its endpoints --------------------------------------------------------------


class ServerLog:
    """The server's output, read as it comes: start_server pipes it, and a pipe nobody reads
    fills up (64 KiB) and then blocks the server's every write to its log."""

    def __init__(self, server: ServerProcess) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)
        self._thread = threading.Thread(target=self._read, args=(server,), daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess) -> None:
        assert server.process.stdout is not None
        for line in server.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def errors(self) -> list[str]:
        """Each error the server logged, with the lines after it (a traceback's frames)."""
        lines = list(self.lines)
        return [
            "".join(lines[index : index + 40])
            for index, line in enumerate(lines)
            if "Traceback" in line or "failed" in line
        ]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("fuzz"))
    log = ServerLog(server)
    yield server
    # Once every connection above is over, the server rests: no greenlet is left spinning.
    idle_cpu = cpu_seconds_over(worker_pid(server), IDLE_SAMPLE_SECONDS)
    server.stop()
    assert idle_cpu < 0.2 * IDLE_SAMPLE_SECONDS, f"{idle_cpu:.2f} s of CPU while idle"
    # Not one refusal above was an error inside the server.
    assert log.errors() == []


IDLE_SAMPLE_SECONDS = 2.0


def cpu_seconds_over(pid: int, seconds: float) -> float:
    """The CPU time (user and system) that process ``pid`` uses in the next ``seconds``."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(seconds)
    return used() - before


@pytest.fixture(scope="module")
def run_id(fuzz_server: ServerProcess) -> str:
    with fuzz_server.client() as client:
        response = client.post("/api/v1/tasks/fuzz/trigger", json={"payload": None})
        assert response.status_code == 201, response.text
        value: str = response.json()["id"]
        return value


@pytest.fixture(scope="module")
def dashboard_cookie(fuzz_server: ServerProcess) -> str:
    """A signed-in session cookie for the dashboard's websocket."""
    response = httpx.post(f"{fuzz_server.url}/login", data={"secret_key": SECRET_KEY}, timeout=10)
    assert response.status_code in (302, 303), response.text
    return response.headers["set-cookie"].split(";", 1)[0]


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    headers: dict[str, str]
    hello: bytes = b""  # what puts the connection where frames are read (a writer's hello)


def unique_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def hello(writer_id: str = "fuzz") -> bytes:
    return text(json.dumps({"type": "hello", "writer_id": writer_id}))


ENDPOINTS = ["reader", "writer", "dashboard"]


@pytest.fixture(params=ENDPOINTS)
def endpoint(
    request: pytest.FixtureRequest, fuzz_server: ServerProcess, run_id: str, dashboard_cookie: str
) -> Endpoint:
    key = unique_key("k")
    if request.param == "reader":
        return Endpoint("reader", f"/realtime/v2/streams/{run_id}/{key}", AUTH)
    if request.param == "writer":
        path = f"/realtime/v2/streams/{run_id}/{key}/append"
        return Endpoint("writer", path, AUTH, hello())
    headers = {"Cookie": dashboard_cookie, "Origin": fuzz_server.url}
    return Endpoint("dashboard", f"/_reactpy/stream/runs/{run_id}", headers)


def connect(server: ServerProcess, endpoint: Endpoint) -> RawSocket:
    """A raw connection to ``endpoint``, past its hello (a writer's ``ready`` is read)."""
    raw = RawSocket(server.url, endpoint.path, endpoint.headers)
    if endpoint.hello:
        raw.send(endpoint.hello)
        assert json.loads(raw.receive_text())["type"] == "ready"
    return raw


def refused(server: ServerProcess, endpoint: Endpoint, *data: bytes) -> Outcome:
    """Send ``data`` on a fresh connection; how the server ended it."""
    raw = connect(server, endpoint)
    try:
        for item in data:
            if not raw.send(item):
                break
        return raw.outcome()
    finally:
        raw.close()


def assert_closed_properly(outcome: Outcome, *codes: int, reason: str | None = "") -> None:
    """A close frame with one of ``codes`` (never 1011, never a reset), in time, with a
    non-empty reason containing ``reason`` (``None``: a reason is not required)."""
    assert not outcome.reset, f"reset without a close frame: {outcome}"
    assert outcome.code is not None, f"no close frame: {outcome}"
    assert outcome.code != CLOSE_INTERNAL_ERROR, outcome
    assert outcome.code in codes, outcome
    assert outcome.seconds < CLOSE_WITHIN, outcome
    if reason is not None:
        assert outcome.reason, f"a close without a reason: {outcome}"
        assert reason in outcome.reason, outcome


def healthy(server: ServerProcess, run_id: str) -> None:
    """The server answers its health check, and a writer and a reader still work."""
    response = httpx.get(f"{server.url}/healthz", timeout=HEALTHY_WITHIN)
    assert response.status_code == 200
    key = unique_key("healthy")
    writer = RawSocket(server.url, f"/realtime/v2/streams/{run_id}/{key}/append", AUTH)
    try:
        writer.send(hello("healthy"))
        assert json.loads(writer.receive_text())["type"] == "ready"
        writer.send(text(json.dumps({"type": "chunks", "seq": 0, "chunks": ["ok"]})))
        assert json.loads(writer.receive_text()) == {"type": "ack", "seq": 0}
    finally:
        writer.close()
    reader = RawSocket(server.url, f"/realtime/v2/streams/{run_id}/{key}", AUTH)
    try:
        assert json.loads(reader.receive_text()) == {"type": "chunks", "index": 0, "chunks": ["ok"]}
    finally:
        reader.close()


def stored(server: ServerProcess, run_id: str, key: str) -> list[Any]:
    with server.client() as client:
        response = client.get(f"/v1/stream/runs/{run_id}/{key}", params={"offset": "-1"})
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    chunks: list[Any] = response.json()
    return chunks


def worker_pid(server: ServerProcess) -> int:
    """gunicorn's single worker: the arbiter's only child."""
    arbiter = server.process.pid
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- protocol violations: every endpoint ------------------------------------------------------

PROTOCOL_VIOLATIONS = {
    "unmasked": frame(OP_TEXT, b'{"type": "end"}', masked=False),
    "reserved-bits": frame(OP_TEXT, b"{}", rsv=0b100),
    "reserved-opcode-3": frame(0x3, b"{}"),
    "reserved-control-opcode-b": frame(0xB, b""),
    "fragmented-ping": frame(OP_PING, b"x", fin=False),
    "control-frame-over-125-bytes": frame(OP_PING, b"x" * 126),
    "continuation-without-start": frame(OP_CONTINUATION, b"{}"),
    "new-message-inside-a-fragmented-one": frame(OP_TEXT, b"{", fin=False) + text(b"}"),
    "close-with-1-byte-payload": frame(OP_CLOSE, b"\x03"),
}


@pytest.mark.parametrize("violation", PROTOCOL_VIOLATIONS)
def test_a_protocol_violation_is_failed_with_1002(
    fuzz_server: ServerProcess, endpoint: Endpoint, violation: str
) -> None:
    """RFC 6455 section 5.1-5.5: the server must fail the connection; wsproto sends 1002 with
    a reason that names the violation."""
    outcome = refused(fuzz_server, endpoint, PROTOCOL_VIOLATIONS[violation])
    assert_closed_properly(outcome, CLOSE_PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "data",
    [
        text(b"\xff\xfe"),
        text(b'{"type": "hello", "writer_id": "\xed\xa0\x80"}'),  # a lone surrogate
        frame(OP_TEXT, b'{"a": "\xc3', fin=False) + frame(OP_CONTINUATION, b'"}'),
    ],
    ids=["invalid-bytes", "surrogate", "split-sequence-broken"],
)
def test_invalid_utf8_in_a_text_frame_is_failed_with_1007(
    fuzz_server: ServerProcess, endpoint: Endpoint, data: bytes
) -> None:
    """RFC 6455 section 8.1: a text message that is not UTF-8 fails the connection (1007)."""
    assert_closed_properly(refused(fuzz_server, endpoint, data), CLOSE_INVALID_PAYLOAD)


def test_a_message_over_the_size_limit_is_1009(
    fuzz_server: ServerProcess, run_id: str, endpoint: Endpoint
) -> None:
    """A text message of the limit plus one byte: 1009 (RFC 6455 section 7.4.1), once the
    server read as much as it allows; the server's close frame must reach the client, which is
    still sending when the server stops reading."""
    payload = b"[" + b" " * MAX_MESSAGE_BYTES + b"]"
    big = frame(OP_TEXT, payload, mask_key=b"\0\0\0\0")
    outcome = refused(fuzz_server, endpoint, big)
    # A reader's client may be refused as soon as it sends anything, before the limit.
    codes = (CLOSE_TOO_BIG, 4400) if endpoint.name == "reader" else (CLOSE_TOO_BIG,)
    assert_closed_properly(outcome, *codes)
    healthy(fuzz_server, run_id)


def test_a_huge_declared_length_that_never_arrives_holds_nothing_up(
    fuzz_server: ServerProcess, run_id: str, endpoint: Endpoint
) -> None:
    """A frame header that declares 2**62 bytes, then a few bytes, then silence. Nothing is
    buffered beyond what arrived, every other client is served meanwhile, and the connection
    ends when its client goes; a reader's ends at its ``timeout_in_seconds`` (4408)."""
    if endpoint.name == "reader":
        endpoint = Endpoint(endpoint.name, endpoint.path + "?timeout_in_seconds=2", AUTH)
    pid = worker_pid(fuzz_server)
    before = rss_kib(pid)
    raw = connect(fuzz_server, endpoint)
    try:
        raw.send(frame(OP_TEXT, b'{"type": ', declared_length=1 << 62))
        healthy(fuzz_server, run_id)
        if endpoint.name == "reader":
            outcome = raw.outcome()
            assert_closed_properly(outcome, 4408, reason="no data for 2 seconds")
    finally:
        raw.close()
    assert rss_kib(pid) - before < 10 * 1024
    healthy(fuzz_server, run_id)


# -- malformed, binary and out-of-order frames ---------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        text("not json"),
        text("[1, 2]"),
        text("42"),
        text('"a string"'),
        text("{}"),
        text('{"type": 7}'),
        text('{"type": "chunks", "seq": 0, "chunks": ["a"]}'),
        frame(OP_BINARY, b'{"type": "chunks", "seq": 0, "chunks": ["a"]}'),
        frame(OP_BINARY, b"\x00\xff\x10"),
        frame(OP_TEXT, b"", fin=False) + frame(OP_CONTINUATION, b"x"),
    ],
    ids=[
        "invalid-json",
        "array",
        "number",
        "string",
        "empty-object",
        "type-a-number",
        "well-formed-chunks",
        "binary-json",
        "binary-garbage",
        "fragmented-text",
    ],
)
def test_a_readers_client_that_sends_anything_is_4400(
    fuzz_server: ServerProcess, run_id: str, data: bytes
) -> None:
    path = f"/realtime/v2/streams/{run_id}/{unique_key('r')}"
    outcome = refused(fuzz_server, Endpoint("reader", path, AUTH), data)
    assert_closed_properly(outcome, 4400, reason="send no frames")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (text("not json"), "JSON"),
        (text("[]"), "JSON objects"),
        (text("null"), "JSON objects"),
        (text('{"type": "hello"}'), "writer_id"),
        (text('{"type": "hello", "writer_id": 7}'), "writer_id"),
        (text('{"type": "hello", "writer_id": ["w"]}'), "writer_id"),
        (text('{"type": "chunks", "seq": 0, "chunks": ["a"]}'), "hello"),
        (text('{"type": "end"}'), "hello"),
        (frame(OP_BINARY, b'{"type": "hello", "writer_id": "w"}'), "text"),
        (frame(OP_BINARY, b"\xff\x00"), ""),
    ],
    ids=[
        "invalid-json",
        "array",
        "null",
        "no-writer-id",
        "writer-id-a-number",
        "writer-id-a-list",
        "chunks-before-hello",
        "end-before-hello",
        "binary-hello",
        "binary-garbage",
    ],
)
def test_a_writer_whose_first_frame_is_no_hello_is_4400(
    fuzz_server: ServerProcess, run_id: str, data: bytes, reason: str
) -> None:
    key = unique_key("w")
    path = f"/realtime/v2/streams/{run_id}/{key}/append"
    outcome = refused(fuzz_server, Endpoint("writer", path, AUTH), data)
    assert_closed_properly(outcome, 4400, reason=reason)
    assert stored(fuzz_server, run_id, key) == []


class Writer:
    """A writer on a raw connection that stored chunk 0 (``"kept"``)."""

    def __init__(self, server: ServerProcess, run_id: str) -> None:
        self.key = unique_key("w")
        self.raw = RawSocket(server.url, f"/realtime/v2/streams/{run_id}/{self.key}/append", AUTH)
        self.raw.send(hello())
        assert json.loads(self.raw.receive_text()) == {"type": "ready", "last_seq": -1}
        assert self.write(0, ["kept"]) == {"type": "ack", "seq": 0}

    def write(self, seq: int, chunks: list[Any]) -> dict[str, Any]:
        self.raw.send(text(json.dumps({"type": "chunks", "seq": seq, "chunks": chunks})))
        answer: dict[str, Any] = json.loads(self.raw.receive_text())
        return answer


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (text(json.dumps({"type": "hello", "writer_id": "again"})), 4400, "hello"),
        (text(json.dumps({"type": "chunks", "seq": 5, "chunks": ["gap"]})), 4409, "skips ahead"),
        (text(json.dumps({"type": "chunks", "seq": 2, "chunks": ["gap"]})), 4409, "skips ahead"),
        (frame(OP_BINARY, b'{"type": "chunks", "seq": 1, "chunks": ["bin"]}'), 4400, "text"),
        (frame(OP_BINARY, b"\x89PNG\r\n"), 4400, ""),
        (text('{"type": "chunks", "seq": 1, "chunks": [1e999]}'), 4400, ""),
        (text('{"type": "chunks", "seq": 1, "chunks": ["a"]} trailing'), 4400, "JSON"),
        (text("[" * 10_000 + "]" * 10_000), 4400, ""),
        (text(json.dumps({"type": "chunks", "seq": 1, "chunks": [0] * 100_001})), 4413, ""),
        (text(json.dumps({"type": "chunks", "seq": 1, "chunks": ["x" * (1 << 20)]})), 4413, ""),
    ],
    ids=[
        "second-hello",
        "seq-skips-ahead",
        "seq-skips-one",
        "binary-chunks",
        "binary-garbage",
        "overflowing-number",
        "trailing-data",
        "deeply-nested",
        "too-many-chunks",
        "chunk-too-large",
    ],
)
def test_a_writers_bad_frame_after_hello_is_refused_and_stores_nothing(
    fuzz_server: ServerProcess, run_id: str, data: bytes, code: int, reason: str
) -> None:
    writer = Writer(fuzz_server, run_id)
    try:
        writer.raw.send(data)
        outcome = writer.raw.outcome()
    finally:
        writer.raw.close()
    assert_closed_properly(outcome, code, reason=reason)
    assert outcome.messages == []  # no ack
    assert stored(fuzz_server, run_id, writer.key) == ["kept"]


def test_a_writers_seq_going_backwards_is_acked_without_storing(
    fuzz_server: ServerProcess, run_id: str
) -> None:
    writer = Writer(fuzz_server, run_id)
    try:
        assert writer.write(1, ["a", "b"]) == {"type": "ack", "seq": 2}
        assert writer.write(0, ["again"]) == {"type": "ack", "seq": 2}  # stored already
        assert writer.write(1, ["a", "b", "c"]) == {"type": "ack", "seq": 3}  # its new tail
        writer.raw.send(text('{"type": "end"}'))
        outcome = writer.raw.outcome()
    finally:
        writer.raw.close()
    assert outcome.messages == ['{"type": "ended"}']
    assert_closed_properly(outcome, 1000, reason="finished")
    assert stored(fuzz_server, run_id, writer.key) == ["kept", "a", "b", "c"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
FRAME_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["chunks", "hello", "end ", "CHUNKS", ""]) | JSON_VALUES,
        "seq": st.sampled_from([-1, 0, 1, 2, 2**53, 2**64, 1.5, "1", True, None]) | JSON_VALUES,
        "chunks": JSON_VALUES,
    },
)
MALFORMED = (
    FRAME_FIELDS.map(json.dumps)
    | JSON_VALUES.filter(lambda value: not isinstance(value, dict)).map(json.dumps)
    | st.text(max_size=40)
    | FRAME_FIELDS.map(lambda fields: json.dumps(fields)[:-1])  # cut short
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=MALFORMED)
def test_a_writer_fuzzed_after_hello_is_acked_or_closed_with_a_reason(
    fuzz_server: ServerProcess, run_id: str, payload: str
) -> None:
    """Whatever JSON (or not) comes after hello: an ack of what is stored, or a close with a
    4xxx code and a reason; never 1011, never silence, and a stream that is still valid JSON."""
    writer = Writer(fuzz_server, run_id)
    try:
        # The end right behind: an accepted frame is acked, then the writer ends (1000).
        writer.raw.send(text(payload) + text('{"type": "end"}'))
        outcome = writer.raw.outcome()
    finally:
        writer.raw.close()
    answers = [json.loads(message)["type"] for message in outcome.messages]
    if answers:
        assert answers in (["ack", "ended"], ["ended"]), outcome
        assert_closed_properly(outcome, 1000)
    else:
        assert_closed_properly(outcome, 4400, 4409, 4413)
    assert stored(fuzz_server, run_id, writer.key)[0] == "kept"


# -- the dashboard's view ------------------------------------------------------------------------


def dashboard(server: ServerProcess, run_id: str, cookie: str) -> Endpoint:
    headers = {"Cookie": cookie, "Origin": server.url}
    return Endpoint("dashboard", f"/_reactpy/stream/runs/{run_id}", headers)


def test_the_dashboards_view_without_a_session_is_4401(
    fuzz_server: ServerProcess, run_id: str
) -> None:
    endpoint = Endpoint("dashboard", f"/_reactpy/stream/runs/{run_id}", {})
    assert_closed_properly(refused(fuzz_server, endpoint), 4401, reason="sign in")


@pytest.mark.parametrize(
    "data",
    [
        text("not json"),
        text("[1, 2]"),
        text("42"),
        text("null"),
        text("{}"),
        text('{"type": "layout-event"}'),
        text('{"type": "layout-event", "target": ["x"], "data": []}'),
        text('{"type": "layout-event", "target": "x", "data": 5}'),
        frame(OP_BINARY, b"\xff\x00\x01"),
        frame(OP_BINARY, b'{"type": "layout-event", "target": "x", "data": []}'),
    ],
    ids=[
        "invalid-json",
        "array",
        "number",
        "null",
        "empty-object",
        "no-target",
        "target-a-list",
        "data-a-number",
        "binary-garbage",
        "binary-json",
    ],
)
def test_the_dashboards_view_refuses_what_is_no_reactpy_event_with_4400(
    fuzz_server: ServerProcess, run_id: str, dashboard_cookie: str, data: bytes
) -> None:
    """ReactPy's client sends text messages of ``{"type": "layout-event", "target": <str>,
    "data": <list>}`` only; anything else closes the view with 4400 and a reason, not with a
    silent 1000 nor with an error logged from inside the view."""
    raw = connect(fuzz_server, dashboard(fuzz_server, run_id, dashboard_cookie))
    try:
        assert json.loads(raw.receive_text())["type"] == "layout-update"
        raw.send(data)
        outcome = raw.outcome()
    finally:
        raw.close()
    assert_closed_properly(outcome, 4400, reason="")


def test_an_event_for_no_handler_is_ignored(
    fuzz_server: ServerProcess, run_id: str, dashboard_cookie: str
) -> None:
    raw = connect(fuzz_server, dashboard(fuzz_server, run_id, dashboard_cookie))
    try:
        assert json.loads(raw.receive_text())["type"] == "layout-update"
        raw.send(text('{"type": "layout-event", "target": "nothing", "data": []}'))
        raw.send(frame(OP_CLOSE, struct.pack("!H", 1000)))  # False if closed already
        outcome = raw.outcome()
    finally:
        raw.close()
    assert_closed_properly(outcome, 1000, reason=None)


# -- flooding ------------------------------------------------------------------------------------


def flood(server: ServerProcess, run_id: str, endpoint: Endpoint, message: bytes) -> Outcome:
    """Send FLOOD_FRAMES copies of ``message`` as fast as the socket takes them, while the
    server's health check must answer within HEALTHY_WITHIN seconds and the worker's memory
    must stay within FLOOD_MEMORY_BOUND_KIB of where it started; how the server ended it."""
    pid = worker_pid(server)
    before = rss_kib(pid)
    peak = [before]
    raw = connect(server, endpoint)
    stop = threading.Event()

    def send() -> None:
        batch = b"".join(frame(OP_TEXT, message) for _ in range(1000))
        for _ in range(FLOOD_FRAMES // 1000):
            if stop.is_set() or not raw.send(batch):
                return

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=send, daemon=True), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        started = time.monotonic()
        response = httpx.get(f"{server.url}/healthz", timeout=HEALTHY_WITHIN)
        assert response.status_code == 200
        assert time.monotonic() - started < HEALTHY_WITHIN
        outcome = raw.outcome()
    finally:
        stop.set()
        for thread in threads:
            thread.join(CLOSE_WITHIN)
        raw.close()
    assert peak[0] - before < FLOOD_MEMORY_BOUND_KIB, f"{before} KiB grew to {peak[0]} KiB"
    healthy(server, run_id)
    return outcome


def test_a_flooding_readers_client_is_4400_with_memory_bounded(
    fuzz_server: ServerProcess, run_id: str
) -> None:
    endpoint = Endpoint("reader", f"/realtime/v2/streams/{run_id}/{unique_key('r')}", AUTH)
    outcome = flood(fuzz_server, run_id, endpoint, b'{"type": "chunks", "chunks": [1]}')
    assert_closed_properly(outcome, 4400, reason="send no frames")


def test_a_flooding_dashboard_view_stays_bounded(
    fuzz_server: ServerProcess, run_id: str, dashboard_cookie: str
) -> None:
    """Thousands of events (for no handler) as fast as they go: memory bounded, the server
    answering, and the view closed with 1013 and a reason once more than a thousand events
    wait for it (or, when it keeps up, closed normally when its client closes)."""
    event = b'{"type": "layout-event", "target": "nothing", "data": []}'
    endpoint = dashboard(fuzz_server, run_id, dashboard_cookie)
    pid = worker_pid(fuzz_server)
    before = rss_kib(pid)
    raw = connect(fuzz_server, endpoint)
    try:
        batch = b"".join(frame(OP_TEXT, event) for _ in range(1000))
        started = time.monotonic()
        for _ in range(DASHBOARD_FLOOD_FRAMES // 1000):
            if not raw.send(batch):
                break  # closed for sending too fast
        response = httpx.get(f"{fuzz_server.url}/healthz", timeout=HEALTHY_WITHIN)
        assert response.status_code == 200
        assert time.monotonic() - started < CLOSE_WITHIN
        raw.send(frame(OP_CLOSE, struct.pack("!H", 1000)))  # False if closed already
        outcome = raw.outcome()
    finally:
        raw.close()
    assert rss_kib(pid) - before < FLOOD_MEMORY_BOUND_KIB
    assert_closed_properly(outcome, 1000, 1008, 1013, 4400, reason=None)
    healthy(fuzz_server, run_id)


def test_a_flooding_writer_is_acked_in_order(fuzz_server: ServerProcess, run_id: str) -> None:
    """A writer that sends a thousand frames without waiting gets every ack, in order."""
    writer = Writer(fuzz_server, run_id)
    frames = 1000
    try:
        writer.raw.send(
            b"".join(
                text(json.dumps({"type": "chunks", "seq": seq, "chunks": [seq]}))
                for seq in range(1, frames + 1)
            )
        )
        acks = [json.loads(writer.raw.receive_text())["seq"] for _ in range(frames)]
        writer.raw.send(text('{"type": "end"}'))
        outcome = writer.raw.outcome()
    finally:
        writer.raw.close()
    assert acks == list(range(1, frames + 1))
    assert_closed_properly(outcome, 1000, reason="finished")
    assert stored(fuzz_server, run_id, writer.key) == ["kept", *range(1, frames + 1)]
