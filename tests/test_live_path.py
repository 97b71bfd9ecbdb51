"""The live path as real clients meet it: SSE readers across keep-alives and reconnects
(``httpx-sse``, and the ``Last-Event-ID`` an ``EventSource`` sends), websocket readers of large
backlogs with a default ``websockets`` client, readers that send what they should not, and two
connections that claim one writer id."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess, start_server
from httpx_sse import ServerSentEvent, connect_sse
from test_realtime import Writer, open_ws, stored, trigger, unique, wait_closed, ws_url
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from werkzeug.serving import make_server

from runstream import wire
from runstream.server import create_app, runtime_of

KEEPALIVE = 0.3  # RUNSTREAM_KEEPALIVE of the quick_server fixture


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose SSE responses send a keep-alive every 0.3 s."""
    server = start_server(
        tmp_path_factory.mktemp("quick"), env={"RUNSTREAM_KEEPALIVE": str(KEEPALIVE)}
    )
    yield server
    server.stop()


def sse_events(
    client: httpx.Client, path: str, *, until: int, headers: dict[str, str] | None = None
) -> list[ServerSentEvent]:
    """SSE events of a live read until ``until`` data events and the control event after the
    last of them came (or the server ended the response)."""
    events: list[ServerSentEvent] = []
    with connect_sse(
        client, "GET", path, headers=headers or {}, timeout=httpx.Timeout(10)
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        for event in source.iter_sse():
            events.append(event)
            if event.event == "control" and sum(e.event == "data" for e in events) >= until:
                break
    return events


def post(client: httpx.Client, path: str, body: bytes, content_type: str) -> None:
    response = client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code in (200, 204), response.text


@pytest.mark.parametrize(
    ("content_type", "bodies", "expected"),
    [
        ("application/json", [b'{"n": 1}', b'{"n": 2}'], ['[{"n": 1}]', '[{"n": 2}]']),
        ("text/plain", [b"first", b"second"], ["first", "second"]),
    ],
)
def test_an_idle_sse_reader_gets_each_message_once_across_keep_alives(
    quick_server: ServerProcess,
    content_type: str,
    bodies: list[bytes],
    expected: list[str],
) -> None:
    path = f"/v1/stream/tests/idle-{unique('sse')}"
    with quick_server.client() as client:
        assert client.put(path, headers={"Content-Type": content_type}).status_code == 201
        received: list[ServerSentEvent] = []

        def listen() -> None:
            with quick_server.client() as reader:
                received.extend(sse_events(reader, f"{path}?offset=-1&live=sse", until=2))

        listener = threading.Thread(target=listen)
        listener.start()
        post(client, path, bodies[0], content_type)
        time.sleep(KEEPALIVE * 4)  # three keep-alives and more, with nothing new
        post(client, path, bodies[1], content_type)
        listener.join(15)

    data = [event.data for event in received if event.event == "data"]
    assert data == expected  # each once, though keep-alives came between them


def test_every_control_event_carries_its_offset_as_the_event_id(
    server: ServerProcess, client: httpx.Client
) -> None:
    path = f"/v1/stream/tests/ids-{unique('sse')}"
    client.put(path, headers={"Content-Type": "application/json"})
    post(client, path, b"[1, 2, 3]", "application/json")

    events = sse_events(client, f"{path}?offset=-1&live=sse", until=1)
    control = next(event for event in events if event.event == "control")

    assert control.id == json.loads(control.data)["streamNextOffset"]


def test_an_eventsource_reconnect_with_last_event_id_resumes_exactly(
    server: ServerProcess, client: httpx.Client
) -> None:
    """A browser's EventSource reopens the URL it first opened (offset=-1) and sends the last
    id it saw as Last-Event-ID: the read continues there, repeating nothing."""
    path = f"/v1/stream/tests/resume-{unique('sse')}"
    client.put(path, headers={"Content-Type": "application/json"})
    post(client, path, b'["a", "b"]', "application/json")
    url = f"{path}?offset=-1&live=sse"

    first = sse_events(client, url, until=1)
    last_id = [event.id for event in first if event.event == "control"][-1]
    post(client, path, b'["c"]', "application/json")
    again = sse_events(client, url, until=1, headers={"Last-Event-ID": last_id})

    assert [json.loads(e.data) for e in first if e.event == "data"] == [["a", "b"]]
    assert [json.loads(e.data) for e in again if e.event == "data"] == [["c"]]


def test_a_bad_last_event_id_is_a_400_that_says_so(
    server: ServerProcess, client: httpx.Client
) -> None:
    path = f"/v1/stream/tests/bad-id-{unique('sse')}"
    client.put(path, headers={"Content-Type": "application/json"})

    response = client.get(
        path, params={"offset": "-1", "live": "sse"}, headers={"Last-Event-ID": "nonsense"}
    )

    assert response.status_code == 400
    assert "offset" in response.text


def test_a_backlog_larger_than_a_frame_reaches_a_default_websockets_client(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Three megabytes of chunks read by a client with the websockets package's default limit
    on message size (1 MiB): every frame fits."""
    run_id, _ = trigger(client, unique("backlog"))
    chunk = "x" * 300_000
    with Writer(server, run_id, "big", "w") as writer:
        writer.write(0, [chunk] * 5)
        writer.write(5, [chunk] * 5)
        writer.end()

    frames: list[int] = []
    with connect(
        ws_url(server, run_id, "big", timeout_in_seconds=1), additional_headers=AUTH
    ) as ws:
        assert ws.protocol.max_message_size == 2**20  # the client's default
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                message = ws.recv(timeout=5)
                frames.append(len(message.encode() if isinstance(message, str) else message))
                if len(frames) >= 20:
                    break
        code = ws.close_code

    assert code != 1009  # never "message too big"
    assert all(size <= wire.MAX_READER_FRAME_BYTES for size in frames)
    assert sum(frames) > 3_000_000


def test_a_chunk_that_cannot_fit_a_reader_frame_is_refused(
    server: ServerProcess, client: httpx.Client
) -> None:
    run_id, _ = trigger(client, unique("oversized"))
    too_large = "y" * wire.MAX_RUN_CHUNK_BYTES  # its JSON quotes make it two bytes too many

    with Writer(server, run_id, "k", "w") as writer:
        code, reason = writer.refused({"type": "chunks", "seq": 0, "chunks": [too_large]})

    assert code == wire.CLOSE_TOO_LARGE
    assert reason and "limit" in reason


def server_rss_kib(server: ServerProcess) -> int:
    """The resident memory of the server's processes (gunicorn's arbiter and its worker)."""
    total = 0
    for pid in [str(server.process.pid), *children(server.process.pid)]:
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
    return total


def children(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(entry)
    return found


def test_a_reader_that_floods_the_server_is_closed_and_costs_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    """A client with a read-only token that sends frames to its reader connection is closed
    with 4400 at the first, and the server keeps none of what it sent."""
    run_id, read_token = trigger(client, unique("flood"))
    baseline = server_rss_kib(server)
    frame = "z" * (1 << 20)
    sent = 0
    with open_ws(
        ws_url(server, run_id, "default"), {"Authorization": f"Bearer {read_token}"}
    ) as ws:
        with contextlib.suppress(ConnectionClosed, OSError):
            for _ in range(200):  # up to 200 MiB
                ws.send(frame)
                sent += 1
        code, reason = wait_closed(ws)

    assert code == wire.CLOSE_INVALID
    assert reason and "send no frames" in reason
    assert sent < 200
    assert server_rss_kib(server) - baseline < 64 * 1024  # far less than what was sent


def test_a_second_connection_with_a_writer_id_takes_it_over(
    server: ServerProcess, client: httpx.Client
) -> None:
    """The older connection is closed with 4403; nothing it sends afterwards is stored or
    acknowledged; every acknowledged chunk of either connection is stored once."""
    run_id, _ = trigger(client, unique("takeover"))
    with Writer(server, run_id, "k", "same-id") as first:
        assert first.write(0, ["a0"]) == 0
        with Writer(server, run_id, "k", "same-id") as second:
            assert second.last_seq == 0
            code, reason = first.refused({"type": "chunks", "seq": 1, "chunks": ["stale"]})
            assert second.write(1, ["b1"]) == 1
            second.end()

    assert code == wire.CLOSE_NOT_PERMITTED
    assert reason and "taken over" in reason
    assert stored(client, run_id, "k") == ["a0", "b1"]


def test_a_fenced_session_of_a_writer_id_is_refused_by_the_store(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Even if the older connection's frame reaches the server after the takeover (as from
    another server process), the store's epoch refuses it: no ack for an unstored chunk."""
    run_id, _ = trigger(client, unique("fenced"))
    with Writer(server, run_id, "k", "w") as first:
        first.send(0, ["from the first"])
        with Writer(server, run_id, "k", "w") as second:
            # The first frame was stored before the takeover, or is refused: never both lost.
            answer = None
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                answer = first.receive()
            chunks = stored(client, run_id, "k")
            if answer is not None and answer.get("type") == "ack":
                assert chunks == ["from the first"]
            second.write(second.last_seq + 1, ["from the second"])

    assert stored(client, run_id, "k")[-1] == "from the second"


# -- what the live path costs the database -------------------------------------------------


@pytest.fixture
def in_process_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The application served in this process (so that the test sees its store), on a real
    socket by werkzeug's threaded server."""
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET_KEY})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}", runtime_of(app)
    http.shutdown()
    runtime_of(app).close()


def test_a_hundred_websocket_readers_at_the_tail_cost_no_store_read_per_append(
    in_process_server: tuple[str, Any],
) -> None:
    """Over real sockets (the follower's own test does 1,000 appends to 100 followers): each
    append reaches every reader without a read of the store per reader."""
    appends = 100
    url, runtime = in_process_server
    run_id = runtime.runs.trigger("fan-out", None).id
    session = runtime.run_streams.open_writer(run_id, "default", "w")
    received: list[list[Any]] = [[] for _ in range(100)]
    connected = threading.Barrier(101)

    def reader(index: int) -> None:
        ws_base = url.replace("http://", "ws://")
        with connect(
            f"{ws_base}/realtime/v2/streams/{run_id}/default?timeout_in_seconds=30",
            additional_headers=AUTH,
        ) as ws:
            connected.wait()
            while len(received[index]) < appends:
                frame = json.loads(ws.recv(timeout=30))
                received[index].extend(frame["chunks"])

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(100)]
    for thread in readers:
        thread.start()
    connected.wait()
    time.sleep(0.5)  # every reader past its first read, waiting at the tail
    reads = runtime.store.read_count
    for n in range(appends):
        runtime.run_streams.write(run_id, "default", "w", session.epoch, n, [n])
    for thread in readers:
        thread.join(60)

    assert all(chunks == list(range(appends)) for chunks in received)
    assert runtime.store.read_count - reads <= appends  # not one per reader per append


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_an_append_between_the_first_read_and_the_wait_is_in_the_same_response(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live: str
) -> None:
    """The append is made to land exactly after the live read's first read of the store and
    before it waits: the follower listened before reading, so the response still carries it."""
    from runstream.server.faces import durable_streams

    app = create_app(
        {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET_KEY, "LONG_POLL_TIMEOUT": 5}
    )
    store = runtime_of(app).store
    client = app.test_client()
    path = "/v1/stream/tests/between"
    client.put(path, headers={**AUTH, "Content-Type": "text/plain"})
    reads = 0
    original = durable_streams.StreamReading.read

    def read_then_append(reading: Any, position: int | None) -> Any:
        nonlocal reads
        batch = original(reading, position)
        reads += 1
        if reads == 1:
            store.append(
                "tests/between",
                durable_streams.AppendRequest([b"between"], content_type="text/plain"),
            )
        return batch

    monkeypatch.setattr(durable_streams.StreamReading, "read", read_then_append)
    started = time.monotonic()
    response = client.get(
        path, query_string={"offset": "now", "live": live}, headers=AUTH, buffered=False
    )
    body = next(response.response) if live == "sse" else response.get_data()
    if live == "sse":
        body += next(response.response)
    response.close()

    assert b"between" in body
    assert time.monotonic() - started < 2  # delivered, not found by a later timeout
    runtime_of(app).close()


def test_run_stream_connections_are_not_compressed(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Each reader frame is built once and sent as it is to every reader, and a writer's acks
    cost no compression: a client's offer of per-message compression is declined."""
    run_id, _ = trigger(client, unique("plain"))
    with connect(ws_url(server, run_id, "k"), additional_headers=AUTH) as reader:
        offered_back = reader.response.headers.get("Sec-WebSocket-Extensions")
    with connect(ws_url(server, run_id, "k", append=True), additional_headers=AUTH) as writer:
        writer_extensions = writer.response.headers.get("Sec-WebSocket-Extensions")

    assert offered_back is None
    assert writer_extensions is None


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_a_run_stream_chunk_too_large_for_a_frame_is_refused_over_http(
    server: ServerProcess, client: httpx.Client, method: str
) -> None:
    run_id, _ = trigger(client, unique("http-oversized"))
    body = json.dumps(["y" * wire.MAX_RUN_CHUNK_BYTES])

    response = client.request(
        method,
        f"/v1/stream/runs/{run_id}/k",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert "limit" in response.text
    assert client.get(f"/api/v1/runs/{run_id}").json()["streams"] == []
