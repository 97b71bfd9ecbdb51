"""Run streams over real websockets (and the HTTP faces of the same streams), against a real
`runstream serve`: writers, readers, the end of a stream, authentication, limits and expiry."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from runstream.server.runs.auth import Auth

JSON = "application/json"
# Long enough for anything a test waits for; short enough that a hang fails instead of stalling.
RECV_TIMEOUT = 15.0
CHUNK_LIMIT = 1024  # RUNSTREAM_MAX_CHUNK_BYTES of the limited_server fixture
STREAM_LIMIT = 4096  # RUNSTREAM_MAX_STREAM_BYTES of the limited_server fixture

Headers = dict[str, str]


# -- helpers ---------------------------------------------------------------------------------


def bearer(credential: str) -> Headers:
    return {"Authorization": f"Bearer {credential}"}


def unique(prefix: str) -> str:
    """A task id or key no other test uses, so that claims on the shared server find only ours."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def trigger(client: httpx.Client, task_id: str, payload: Any = None) -> tuple[str, str]:
    """Trigger a run through the API; returns its id and its public access token."""
    response = client.post(f"/api/v1/tasks/{task_id}/trigger", json={"payload": payload})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["public_access_token"]


def complete(client: httpx.Client, run_id: str, task_id: str, output: Any = None) -> None:
    """Claim the run (the only queued run of its task) and complete it, as a worker would."""
    worker = f"worker-{run_id}"
    claimed = client.post(
        "/api/v1/runs/claim", json={"worker_id": worker, "task_ids": [task_id], "limit": 1}
    )
    assert claimed.status_code == 200, claimed.text
    assert [run["id"] for run in claimed.json()["runs"]] == [run_id]
    done = client.post(
        f"/api/v1/runs/{run_id}/complete", json={"worker_id": worker, "output": output}
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "COMPLETED"


def ws_url(
    server: ServerProcess, run_id: str, key: str, *, append: bool = False, **params: Any
) -> str:
    path = f"/realtime/v2/streams/{quote(run_id, safe='')}/{quote(key, safe='')}"
    if append:
        path += "/append"
    query = f"?{urlencode(params)}" if params else ""
    return server.url.replace("http://", "ws://") + path + query


def open_ws(url: str, headers: Headers | None) -> ClientConnection:
    return connect(url, additional_headers=headers or {}, proxy=None, open_timeout=10)


def wait_closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Drain the connection until the server closes it; its close code and reason."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            ws.recv(timeout=RECV_TIMEOUT)
    ws.close()
    return ws.close_code, ws.close_reason


@dataclass
class Reading:
    """Everything a websocket reader received before the server closed the connection."""

    chunks: list[tuple[int, Any]]
    end: dict[str, Any] | None
    code: int | None
    reason: str | None

    @property
    def values(self) -> list[Any]:
        return [chunk for _, chunk in self.chunks]

    @property
    def indexes(self) -> list[int]:
        return [index for index, _ in self.chunks]


def read(
    server: ServerProcess,
    run_id: str,
    key: str,
    headers: Headers | None = AUTH,
    *,
    stop_after: int | None = None,
    **params: Any,
) -> Reading:
    """Read a run stream over a websocket until the server closes it (or, with ``stop_after``,
    until that many chunks have arrived: then the client hangs up)."""
    chunks: list[tuple[int, Any]] = []
    end = None
    with open_ws(ws_url(server, run_id, key, **params), headers) as ws:
        try:
            while True:
                frame = json.loads(ws.recv(timeout=RECV_TIMEOUT))
                assert end is None, f"a frame after the end frame: {frame}"
                if frame["type"] == "chunks":
                    expected = chunks[-1][0] + 1 if chunks else frame["index"]
                    assert frame["index"] == expected, "frames must follow each other"
                    assert frame["chunks"], "a chunks frame carries at least one chunk"
                    chunks.extend(enumerate(frame["chunks"], start=frame["index"]))
                    if stop_after is not None and len(chunks) >= stop_after:
                        break
                else:
                    assert frame["type"] == "end", frame
                    end = frame
        except ConnectionClosed:
            pass
    return Reading(chunks, end, ws.close_code, ws.close_reason)


class Writer:
    """A websocket writer: hello, then numbered chunks, each frame acknowledged."""

    def __init__(
        self,
        server: ServerProcess,
        run_id: str,
        key: str,
        writer_id: str,
        headers: Headers | None = AUTH,
    ) -> None:
        self._connection = contextlib.ExitStack()
        self.ws = self._connection.enter_context(
            open_ws(ws_url(server, run_id, key, append=True), headers)
        )
        self.ws.send(json.dumps({"type": "hello", "writer_id": writer_id}))
        ready = self.receive()
        assert ready["type"] == "ready", ready
        self.last_seq: int = ready["last_seq"]

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connection.close()

    def receive(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=RECV_TIMEOUT))
        return frame

    def send(self, seq: int, chunks: list[Any]) -> None:
        """Send a chunks frame without waiting for its ack."""
        self.ws.send(json.dumps({"type": "chunks", "seq": seq, "chunks": chunks}))

    def write(self, seq: int, chunks: list[Any]) -> int:
        """Send a chunks frame and wait for its ack; returns the acknowledged seq."""
        self.send(seq, chunks)
        ack = self.receive()
        assert ack["type"] == "ack", ack
        seq_acked: int = ack["seq"]
        return seq_acked

    def end(self) -> None:
        self.ws.send(json.dumps({"type": "end"}))
        assert self.receive() == {"type": "ended"}
        assert wait_closed(self.ws)[0] == 1000

    def refused(self, frame: dict[str, Any] | str) -> tuple[int | None, str | None]:
        """Send a frame the server must refuse; the close code and reason it answers with."""
        with contextlib.suppress(ConnectionClosed):
            self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        return wait_closed(self.ws)

    def cut_off(self) -> None:
        """Kill the TCP connection at once: no close frame, unsent data discarded (RST)."""
        self.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.close_socket()


def append_refused(
    server: ServerProcess, run_id: str, key: str, headers: Headers | None, *frames: Any
) -> tuple[int | None, str | None]:
    """Open an append websocket, say hello and send ``frames`` without waiting for answers;
    the code and reason the server closes with."""
    with open_ws(ws_url(server, run_id, key, append=True), headers) as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(json.dumps({"type": "hello", "writer_id": "refused"}))
            for frame in frames:
                ws.send(json.dumps(frame))
        return wait_closed(ws)


def stream_url(run_id: str, key: str) -> str:
    return f"/v1/stream/runs/{run_id}/{key}"


def stored(client: httpx.Client, run_id: str, key: str) -> list[Any]:
    """Every chunk of a run stream, read over the Durable Streams protocol."""
    response = client.get(stream_url(run_id, key), params={"offset": "-1"})
    assert response.status_code == 200, response.text
    assert response.headers["Stream-Up-To-Date"] == "true"
    chunks: list[Any] = response.json()
    return chunks


def stream_details(client: httpx.Client, run_id: str) -> dict[str, dict[str, Any]]:
    """The streams GET /api/v1/runs/<id> lists, by key."""
    response = client.get(f"/api/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    return {stream["key"]: stream for stream in response.json()["streams"]}


def post_json(client: httpx.Client, url: str, body: Any, **options: Any) -> httpx.Response:
    return client.post(url, content=json.dumps(body), headers={"Content-Type": JSON}, **options)


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for readers that wait while the test writes."""
    with ThreadPoolExecutor(4) as pool:
        yield pool


def read_in_background(
    pool: ThreadPoolExecutor, server: ServerProcess, run_id: str, key: str, **params: Any
) -> Future[Reading]:
    reading = pool.submit(read, server, run_id, key, **params)
    time.sleep(0.3)  # let the reader connect and start waiting
    return reading


# -- writers ---------------------------------------------------------------------------------


def test_a_writer_stores_its_chunks_in_order_and_ends(
    server: ServerProcess, client: httpx.Client
) -> None:
    """hello → ready(-1), each frame acked with its last seq, end → ended and close 1000."""
    task = unique("write")
    run_id, _ = trigger(client, task)
    chunks: list[Any] = ["text", 1, 2.5, None, True, {"nested": [1, {"deep": "é✓"}]}, []]

    with Writer(server, run_id, "default", "writer-1") as writer:
        assert writer.last_seq == -1
        assert writer.write(0, chunks[:2]) == 1
        assert writer.write(2, chunks[2:]) == len(chunks) - 1
        writer.end()

    assert stored(client, run_id, "default") == chunks
    assert stream_details(client, run_id)["default"]["closed"] is False


def test_three_writers_at_once_store_every_chunk_once_in_each_writers_order(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Three writers on one stream at once, 200 chunks each in frames of varying sizes: every
    chunk is stored exactly once, and each writer's chunks keep their order."""
    task = unique("three")
    run_id, _ = trigger(client, task)
    per_writer = 200
    sizes = [1, 3, 7, 2, 11, 5, 16]
    start = threading.Barrier(3)

    def write_all(writer: int) -> None:
        with Writer(server, run_id, "shared", f"writer-{writer}") as ws:
            assert ws.last_seq == -1
            start.wait(10)
            seq, frame = 0, writer
            while seq < per_writer:
                chunks = [
                    {"w": writer, "n": n}
                    for n in range(seq, min(per_writer, seq + sizes[frame % len(sizes)]))
                ]
                assert ws.write(seq, chunks) == seq + len(chunks) - 1
                seq += len(chunks)
                frame += 1
            ws.end()

    with ThreadPoolExecutor(3) as pool:
        for result in [pool.submit(write_all, writer) for writer in range(3)]:
            result.result(timeout=60)
    complete(client, run_id, task)

    everything = stored(client, run_id, "shared")
    assert len(everything) == 3 * per_writer
    for writer in range(3):
        mine = [chunk["n"] for chunk in everything if chunk["w"] == writer]
        assert mine == list(range(per_writer))
    reading = read(server, run_id, "shared")
    assert reading.values == everything
    assert reading.indexes == list(range(3 * per_writer))
    assert reading.end == {"type": "end", "next_index": 3 * per_writer}


def wait_until_stored_count_settles(client: httpx.Client, run_id: str, key: str) -> int:
    """Poll the stream's chunk count until it stops changing: the server has finished the
    frames of a connection that was cut off."""
    previous = -1
    for _ in range(50):
        count: int = stream_details(client, run_id)[key]["chunk_count"]
        if count == previous:
            return count
        previous = count
        time.sleep(0.1)
    raise AssertionError("the stream kept growing after its only writer was cut off")


@pytest.mark.parametrize("resend_from", ["last_seq + 1", "earlier"])
def test_a_writer_cut_off_mid_stream_resumes_without_duplicates_or_gaps(
    server: ServerProcess, client: httpx.Client, resend_from: str
) -> None:
    """A writer whose connection dies with frames unacknowledged reconnects with the same
    writer_id; ready.last_seq is its last stored chunk, and resending from there (or from
    an earlier, overlapping seq) stores every chunk exactly once."""
    task = unique("cut")
    run_id, _ = trigger(client, task)
    chunks = [{"n": n, "text": f"token {n} " * 5} for n in range(300)]

    writer = Writer(server, run_id, "out", "worker-7:out")
    assert writer.write(0, chunks[0:10]) == 9  # acknowledged: surely stored
    for seq in range(10, 250, 10):  # sent, never acknowledged
        writer.send(seq, chunks[seq : seq + 10])
    writer.cut_off()
    stored_count = wait_until_stored_count_settles(client, run_id, "out")

    with Writer(server, run_id, "out", "worker-7:out") as again:
        assert again.last_seq == stored_count - 1
        assert 9 <= again.last_seq < 250
        assert stored(client, run_id, "out") == chunks[: again.last_seq + 1]
        first = again.last_seq + 1 if resend_from == "last_seq + 1" else again.last_seq // 2
        highest = again.last_seq
        for seq in range(first, len(chunks), 25):
            highest = max(highest, min(seq + 25, len(chunks)) - 1)
            assert again.write(seq, chunks[seq : seq + 25]) == highest
        again.end()

    assert stored(client, run_id, "out") == chunks
    assert stream_details(client, run_id)["out"]["chunk_count"] == len(chunks)


def test_a_frame_already_stored_is_acked_without_storing(
    server: ServerProcess, client: httpx.Client
) -> None:
    run_id, _ = trigger(client, unique("dup"))

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["a", "b", "c"])
        assert writer.write(0, ["a", "b", "c"]) == 2
        assert writer.write(1, ["b"]) == 2
        assert writer.write(2, ["c", "d"]) == 3
        writer.end()

    assert stored(client, run_id, "k") == ["a", "b", "c", "d"]


def test_a_frame_that_would_leave_a_gap_is_4409_and_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    run_id, _ = trigger(client, unique("gap"))

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["a"])
        code, reason = writer.refused({"type": "chunks", "seq": 5, "chunks": ["f"]})

    assert code == 4409
    assert reason is not None and "skips ahead" in reason
    assert stored(client, run_id, "k") == ["a"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"type": "chunks", "chunks": ["a"]}, "needs seq"),
        ({"type": "chunks", "seq": -1, "chunks": ["a"]}, "needs seq"),
        ({"type": "chunks", "seq": True, "chunks": ["a"]}, "needs seq"),
        ({"type": "chunks", "seq": 0, "chunks": []}, "needs chunks"),
        ({"type": "chunks", "seq": 0, "chunks": "abc"}, "needs chunks"),
        ({"type": "close"}, "unknown frame type"),
        ("not json", "must be JSON"),
        ('["a list"]', "JSON objects"),
    ],
)
def test_a_malformed_frame_is_4400_with_a_reason(
    server: ServerProcess, client: httpx.Client, frame: dict[str, Any] | str, message: str
) -> None:
    run_id, _ = trigger(client, unique("malformed"))

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["kept"])
        code, reason = writer.refused(frame)

    assert code == 4400
    assert reason is not None and message in reason
    assert stored(client, run_id, "k") == ["kept"]


@pytest.mark.parametrize(
    "hello",
    [
        {"type": "chunks", "seq": 0, "chunks": [1]},
        {"type": "hello"},
        {"type": "hello", "writer_id": ""},
    ],
)
def test_a_writer_must_say_hello_with_a_writer_id(
    server: ServerProcess, client: httpx.Client, hello: dict[str, Any]
) -> None:
    run_id, _ = trigger(client, unique("hello"))

    with open_ws(ws_url(server, run_id, "k", append=True), AUTH) as ws:
        ws.send(json.dumps(hello))
        code, reason = wait_closed(ws)

    assert code == 4400
    assert reason is not None and "hello" in reason
    assert "k" not in stream_details(client, run_id)


def test_a_chunk_too_large_for_a_double_keeps_the_stream_valid_json(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Whatever numbers a frame holds, what readers get back is valid JSON."""
    run_id, _ = trigger(client, unique("huge"))

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["kept"])
        writer.ws.send('{"type": "chunks", "seq": 1, "chunks": [1e400]}')
        with contextlib.suppress(ConnectionClosed):
            writer.receive()

    response = client.get(stream_url(run_id, "k"), params={"offset": "-1"})
    assert "Infinity" not in response.text


def test_a_frame_with_a_non_json_constant_is_4400_and_stores_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    """NaN and Infinity are not JSON; a frame carrying them is refused, as the HTTP protocol
    refuses such a body, and the stream stays valid JSON."""
    run_id, _ = trigger(client, unique("nan"))

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["kept"])
        writer.ws.send('{"type": "chunks", "seq": 1, "chunks": [NaN, Infinity]}')
        answer = None
        with contextlib.suppress(ConnectionClosed):
            answer = writer.receive()  # an ack if the frame was stored
        code = wait_closed(writer.ws)[0] if answer is None else None

    response = client.get(stream_url(run_id, "k"), params={"offset": "-1"})
    assert answer is None
    assert code == 4400
    assert response.text == '["kept"]'


# -- readers ---------------------------------------------------------------------------------


def test_a_reader_from_start_index_gets_exactly_the_chunks_from_there(
    server: ServerProcess, client: httpx.Client
) -> None:
    task = unique("index")
    run_id, _ = trigger(client, task)
    chunks = [f"chunk {n}" for n in range(20)]
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, chunks)
        writer.end()
    complete(client, run_id, task)

    for start in (0, 1, 13, 19, 20):
        reading = read(server, run_id, "k", start_index=start)
        assert reading.chunks == list(enumerate(chunks))[start:]
        assert reading.end == {"type": "end", "next_index": 20}
        assert reading.code == 1000


def test_a_reader_resumes_exactly_after_a_lost_connection(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    """Reconnecting with start_index = last index received + 1 continues with no chunk lost or
    repeated, while the writer keeps writing."""
    task = unique("resume")
    run_id, _ = trigger(client, task)
    chunks = [{"n": n} for n in range(40)]

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, chunks[:15])
        first = read(server, run_id, "k", stop_after=5)
        assert first.indexes[:5] == [0, 1, 2, 3, 4]
        resumed = read_in_background(
            background, server, run_id, "k", start_index=first.indexes[-1] + 1
        )
        for seq in range(15, 40, 5):
            writer.write(seq, chunks[seq : seq + 5])
        writer.end()
    complete(client, run_id, task)

    second = resumed.result(timeout=RECV_TIMEOUT)
    assert first.chunks + second.chunks == list(enumerate(chunks))
    assert second.end == {"type": "end", "next_index": 40}


def test_a_reader_past_the_tail_waits_for_data(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    task = unique("past")
    run_id, _ = trigger(client, task)

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["a", "b", "c"])
        reading = read_in_background(background, server, run_id, "k", start_index=5)
        assert not reading.done()
        writer.write(3, ["d", "e", "f", "g"])
        writer.end()
    complete(client, run_id, task)

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == [(5, "f"), (6, "g")]
    assert result.end == {"type": "end", "next_index": 7}


def test_a_reader_before_the_first_write_gets_it_live(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    """A stream nobody has written yet is empty: its reader waits and gets the first chunks."""
    task = unique("first")
    run_id, _ = trigger(client, task)
    reading = read_in_background(background, server, run_id, "later")

    with Writer(server, run_id, "later", "w") as writer:
        writer.write(0, ["hello", "world"])
        writer.end()
    complete(client, run_id, task)

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == [(0, "hello"), (1, "world")]
    assert result.end == {"type": "end", "next_index": 2}


# -- the end of a stream ---------------------------------------------------------------------


def test_a_reader_ends_when_the_run_completes_after_the_writer_ended(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    task = unique("ends")
    run_id, token = trigger(client, task)
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, [1, 2, 3])
        writer.end()
    reading = read_in_background(background, server, run_id, "k", headers=bearer(token))
    assert not reading.done()

    complete(client, run_id, task)

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == [(0, 1), (1, 2), (2, 3)]
    assert result.end == {"type": "end", "next_index": 3}
    assert result.code == 1000
    assert result.reason
    assert stream_details(client, run_id)["k"]["closed"] is True
    again = read(server, run_id, "k", start_index=3)
    assert (again.chunks, again.end, again.code) == ([], {"type": "end", "next_index": 3}, 1000)


def test_a_reader_of_a_key_never_written_ends_when_the_run_ends(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    task = unique("never")
    run_id, _ = trigger(client, task)
    reading = read_in_background(background, server, run_id, "never-written")

    complete(client, run_id, task)

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == []
    assert result.end == {"type": "end", "next_index": 0}
    assert result.code == 1000
    late = read(server, run_id, "never-written")
    assert (late.chunks, late.end, late.code) == ([], {"type": "end", "next_index": 0}, 1000)


@pytest.mark.parametrize("how", ["cancel", "fail"])
def test_a_stream_ends_when_its_run_is_canceled_or_fails(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor, how: str
) -> None:
    task = unique(how)
    run_id, _ = trigger(client, task)
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["x"])
        writer.end()
    reading = read_in_background(background, server, run_id, "k")

    if how == "cancel":
        assert client.post(f"/api/v1/runs/{run_id}/cancel").json()["status"] == "CANCELED"
    else:
        claimed = client.post("/api/v1/runs/claim", json={"worker_id": "w", "task_ids": [task]})
        assert [run["id"] for run in claimed.json()["runs"]] == [run_id]
        failed = client.post(
            f"/api/v1/runs/{run_id}/fail", json={"worker_id": "w", "error": {"message": "boom"}}
        )
        assert failed.json()["status"] == "FAILED"

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == [(0, "x")]
    assert result.end == {"type": "end", "next_index": 1}


def test_completing_the_run_does_not_end_a_stream_its_writer_still_writes(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    """While a writer is connected, the run's end leaves its stream open: the writer's later
    chunks are stored and read, and the stream ends only when the writer sends end."""
    task = unique("still")
    run_id, _ = trigger(client, task)

    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["before"])
        reading = read_in_background(background, server, run_id, "k")
        complete(client, run_id, task)
        assert writer.write(1, ["after", "completion"]) == 2
        time.sleep(0.3)
        assert not reading.done()
        assert stream_details(client, run_id)["k"]["closed"] is False
        writer.end()

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.values == ["before", "after", "completion"]
    assert result.end == {"type": "end", "next_index": 3}
    assert stream_details(client, run_id)["k"]["closed"] is True


def test_a_writer_of_an_ended_stream_is_4409(server: ServerProcess, client: httpx.Client) -> None:
    task = unique("closed")
    run_id, _ = trigger(client, task)
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["done"])
        writer.end()
    complete(client, run_id, task)

    with Writer(server, run_id, "k", "late") as late:
        code, reason = late.refused({"type": "chunks", "seq": 0, "chunks": ["too late"]})

    assert code == 4409
    assert reason is not None and "closed" in reason
    assert stored(client, run_id, "k") == ["done"]


def test_a_reader_of_a_deleted_stream_is_closed_with_4410(
    server: ServerProcess, client: httpx.Client, background: ThreadPoolExecutor
) -> None:
    """The close codes say 4410 means the stream was deleted."""
    run_id, _ = trigger(client, unique("deleted"))
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["a"])
    reading = read_in_background(background, server, run_id, "k", timeout_in_seconds=2)

    assert client.delete(stream_url(run_id, "k")).status_code == 204

    result = reading.result(timeout=RECV_TIMEOUT)
    assert result.chunks == [(0, "a")]
    assert result.code == 4410


# -- reader timeouts -------------------------------------------------------------------------


def test_a_reader_with_no_data_times_out_with_4408(
    server: ServerProcess, client: httpx.Client
) -> None:
    run_id, _ = trigger(client, unique("timeout"))

    reading = read(server, run_id, "k", timeout_in_seconds=1)

    assert (reading.chunks, reading.end) == ([], None)
    assert reading.code == 4408
    assert reading.reason == "no data for 1 seconds"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout_in_seconds", "601"),
        ("timeout_in_seconds", "0"),
        ("timeout_in_seconds", "-1"),
        ("timeout_in_seconds", "1.5"),
        ("start_index", "-1"),
        ("start_index", "x"),
    ],
)
def test_a_bad_read_parameter_is_4400(
    server: ServerProcess, client: httpx.Client, name: str, value: str
) -> None:
    run_id, _ = trigger(client, unique("param"))

    reading = read(server, run_id, "k", **{name: value})

    assert reading.code == 4400
    assert reading.reason is not None and name in reading.reason
    assert reading.chunks == []


# -- authentication --------------------------------------------------------------------------


@pytest.fixture
def written_run(server: ServerProcess, client: httpx.Client) -> tuple[str, str]:
    """A run whose stream "k" holds ["secret"]; its id and public access token."""
    run_id, token = trigger(client, unique("auth"))
    with Writer(server, run_id, "k", "w") as writer:
        writer.write(0, ["secret"])
    return run_id, token


def refusals(
    server: ServerProcess, run_id: str, headers: Headers
) -> tuple[int | None, int | None, int, int, int]:
    """What a caller with ``headers`` gets from: websocket read, websocket append, the run's
    API, the stream over HTTP, and the run list."""
    ws_read = read(server, run_id, "k", headers, timeout_in_seconds=1)
    assert ws_read.chunks == []
    ws_append = append_refused(
        server, run_id, "k", headers, {"type": "chunks", "seq": 9, "chunks": [0]}
    )[0]
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        return (
            ws_read.code,
            ws_append,
            http.get(f"/api/v1/runs/{run_id}").status_code,
            http.get(stream_url(run_id, "k"), params={"offset": "-1"}).status_code,
            http.get("/api/v1/runs").status_code,
        )


def test_no_credential_is_4401_and_401(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    run_id, _ = written_run

    assert refusals(server, run_id, {}) == (4401, 4401, 401, 401, 401)
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        response = anonymous.post("/api/v1/tasks/anything/trigger", json={})
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["error"]
    assert stored(client, run_id, "k") == ["secret"]


def test_a_tampered_or_foreign_credential_is_4401_and_401(
    server: ServerProcess, written_run: tuple[str, str]
) -> None:
    run_id, token = written_run
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    foreign = Auth("rs_sk_some-other-server").create_public_token(
        [f"read:runs:{run_id}"], timedelta(hours=1)
    )

    for credential in (f"{header}.{payload}.{flipped}", foreign, SECRET_KEY + "x", "garbage"):
        assert refusals(server, run_id, bearer(credential)) == (4401, 4401, 401, 401, 401)


def test_an_expired_token_is_401(server: ServerProcess, written_run: tuple[str, str]) -> None:
    run_id, _ = written_run
    token = Auth(SECRET_KEY).create_public_token(["read:runs"], timedelta(seconds=1))
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=10) as http:
        assert http.get(f"/api/v1/runs/{run_id}").status_code == 200
        # A token's expiry is a whole second, rounded up: a one-second token lives from one
        # second to just under two. Past two it has expired, whenever in a second it was made.
        time.sleep(2.1)
        response = http.get(f"/api/v1/runs/{run_id}")

    assert response.status_code == 401
    assert "expired" in response.json()["error"]
    reading = read(server, run_id, "k", bearer(token))
    assert reading.code == 4401
    assert reading.reason is not None and "expired" in reading.reason


def test_a_token_for_one_run_cannot_read_another(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    run_a, token_a = written_run
    run_b, _ = trigger(client, unique("other"))
    with Writer(server, run_b, "k", "w") as writer:
        writer.write(0, ["b's secret"])

    code_b, _, api_b, http_b, listing = refusals(server, run_b, bearer(token_a))

    assert (code_b, api_b, http_b, listing) == (4403, 403, 403, 403)
    own = read(server, run_a, "k", bearer(token_a), stop_after=1)
    assert own.values == ["secret"]
    by_query = read(server, run_a, "k", None, stop_after=1, token=token_a)
    assert by_query.values == ["secret"]
    by_query_b = read(server, run_b, "k", None, timeout_in_seconds=1, token=token_a)
    assert (by_query_b.values, by_query_b.code) == ([], 4403)


def test_a_token_cannot_write(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    """A public access token, even one that reads every run, can only read."""
    run_id, token = written_run
    read_all = client.post("/api/v1/auth/public-tokens", json={"scopes": ["read:runs"]}).json()
    for credential in (token, read_all["token"]):
        code, reason = append_refused(
            server, run_id, "k", bearer(credential), {"type": "chunks", "seq": 1, "chunks": ["x"]}
        )
        assert code == 4403
        assert reason is not None and "secret key" in reason
        with httpx.Client(base_url=server.url, headers=bearer(credential), timeout=10) as http:
            assert post_json(http, stream_url(run_id, "k"), ["forged"]).status_code == 403
            assert (
                http.put(stream_url(run_id, "new"), headers={"Content-Type": JSON}).status_code
                == 403
            )
            assert http.delete(stream_url(run_id, "k")).status_code == 403
            assert http.post("/api/v1/tasks/t/trigger", json={}).status_code == 403
            assert http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 403
            claim = http.post("/api/v1/runs/claim", json={"worker_id": "w", "task_ids": ["t"]})
            assert claim.status_code == 403
            minted = http.post("/api/v1/auth/public-tokens", json={"scopes": ["read:runs"]})
            assert minted.status_code == 403
    assert stored(client, run_id, "k") == ["secret"]
    assert set(stream_details(client, run_id)) == {"k"}


def test_a_read_all_token_reads_any_run_and_lists_runs(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    run_id, _ = written_run
    minted = client.post(
        "/api/v1/auth/public-tokens", json={"scopes": ["read:runs"], "expiration": "15m"}
    )
    assert minted.status_code == 201
    headers = bearer(minted.json()["token"])

    reading = read(server, run_id, "k", headers, stop_after=1)
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        run = http.get(f"/api/v1/runs/{run_id}")
        stream = http.get(stream_url(run_id, "k"), params={"offset": "-1"})
        listing = http.get("/api/v1/runs", params={"limit": 100})

    assert reading.values == ["secret"]
    assert run.status_code == 200 and run.json()["id"] == run_id
    assert stream.status_code == 200 and stream.json() == ["secret"]
    assert listing.status_code == 200
    assert run_id in [run["id"] for run in listing.json()["data"]]


def test_the_token_returned_by_trigger_reads_its_run(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    run_id, token = written_run

    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=10) as http:
        run = http.get(f"/api/v1/runs/{run_id}")
        stream = http.get(stream_url(run_id, "k"), params={"offset": "-1"})
    by_query = client.get(
        stream_url(run_id, "k"),
        params={"offset": "-1", "token": token},
        headers={"Authorization": ""},
    )

    assert run.status_code == 200
    assert run.json()["streams"] == [{"key": "k", "chunk_count": 1, "bytes": 8, "closed": False}]
    assert stream.json() == ["secret"]
    assert by_query.status_code == 200
    assert by_query.json() == ["secret"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scopes": ["write:runs"]}, "unknown scope 'write:runs'"),
        ({"scopes": ["read:runs:not-a-run"]}, "unknown scope"),
        ({"scopes": []}, "at least one scope"),
        ({"scopes": "read:runs"}, "scopes must be a list"),
        ({"scopes": ["read:runs"], "expiration": "forever"}, "invalid expiration"),
        ({"scopes": ["read:runs"], "expiration": "400d"}, "at most 365 days"),
        ({"scopes": ["read:runs"], "expiration": True}, "expiration must be"),
    ],
)
def test_minting_a_token_with_a_bad_request_is_400(
    client: httpx.Client, body: dict[str, Any], message: str
) -> None:
    response = client.post("/api/v1/auth/public-tokens", json=body)

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_minted_token_for_one_run_reads_only_that_run(
    server: ServerProcess, client: httpx.Client, written_run: tuple[str, str]
) -> None:
    run_id, _ = written_run
    minted = client.post(
        "/api/v1/auth/public-tokens", json={"scopes": [f"read:runs:{run_id}"], "expiration": 60}
    )
    assert minted.status_code == 201

    reading = read(server, run_id, "k", None, stop_after=1, token=minted.json()["token"])
    with httpx.Client(
        base_url=server.url, headers=bearer(minted.json()["token"]), timeout=10
    ) as http:
        listing = http.get("/api/v1/runs")

    assert reading.values == ["secret"]
    assert listing.status_code == 403


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with RUNSTREAM_AUTH=disabled: loopback clients need no credential."""
    server = start_server(tmp_path_factory.mktemp("open"), env={"RUNSTREAM_AUTH": "disabled"})
    yield server
    server.stop()


def test_with_auth_disabled_loopback_clients_need_no_credential(
    open_server: ServerProcess, background: ThreadPoolExecutor
) -> None:
    with httpx.Client(base_url=open_server.url, timeout=10) as anonymous:
        task = unique("open")
        run_id, _ = trigger(anonymous, task)
        reading = read_in_background(background, open_server, run_id, "k", headers=None)
        with Writer(open_server, run_id, "k", "w", headers=None) as writer:
            writer.write(0, ["open", "data"])
            writer.end()
        complete(anonymous, run_id, task)
        listing = anonymous.get("/api/v1/runs")

        assert reading.result(timeout=RECV_TIMEOUT).values == ["open", "data"]
        assert stored(anonymous, run_id, "k") == ["open", "data"]
        assert listing.status_code == 200
        assert [run["id"] for run in listing.json()["data"]] == [run_id]


# -- writers that vanish, workers that vanish -----------------------------------------------

WRITER_TIMEOUT = 2  # RUNSTREAM_WRITER_TIMEOUT of the housekeeping_server fixture
HEARTBEAT_TIMEOUT = 1  # RUNSTREAM_HEARTBEAT_TIMEOUT of the housekeeping_server fixture


@pytest.fixture(scope="module")
def housekeeping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose maintenance runs often, with short writer and heartbeat timeouts."""
    server = start_server(
        tmp_path_factory.mktemp("housekeeping"),
        env={
            "RUNSTREAM_WRITER_TIMEOUT": str(WRITER_TIMEOUT),
            "RUNSTREAM_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "RUNSTREAM_MAINTENANCE_INTERVAL": "0.2",
        },
    )
    yield server
    server.stop()


def test_a_stream_whose_writer_vanished_ends_after_the_writer_timeout(
    housekeeping_server: ServerProcess, background: ThreadPoolExecutor
) -> None:
    """A writer cut off without end holds its stream open at the run's end only until it has
    been silent for RUNSTREAM_WRITER_TIMEOUT; then readers get the end."""
    server = housekeeping_server
    with server.client() as client:
        task = unique("vanish")
        run_id, _ = trigger(client, task)
        writer = Writer(server, run_id, "k", "gone")
        assert writer.write(0, ["a", "b"]) == 1
        writer.cut_off()
        reading = read_in_background(background, server, run_id, "k")

        complete(client, run_id, task)
        assert stream_details(client, run_id)["k"]["closed"] is False

        result = reading.result(timeout=RECV_TIMEOUT)
        assert result.chunks == [(0, "a"), (1, "b")]
        assert result.end == {"type": "end", "next_index": 2}
        assert stream_details(client, run_id)["k"]["closed"] is True


def test_a_connected_quiet_writer_keeps_its_stream_open(
    housekeeping_server: ServerProcess, background: ThreadPoolExecutor
) -> None:
    """A writer that stays connected counts as writing even when it sends nothing for longer
    than the writer timeout: the stream ends only when it says end."""
    server = housekeeping_server
    with server.client() as client:
        task = unique("quiet")
        run_id, _ = trigger(client, task)
        with Writer(server, run_id, "k", "quiet") as writer:
            writer.write(0, ["a"])
            reading = read_in_background(background, server, run_id, "k")
            complete(client, run_id, task)
            time.sleep(WRITER_TIMEOUT + 0.5)
            assert not reading.done()
            assert stream_details(client, run_id)["k"]["closed"] is False
            assert writer.write(1, ["b"]) == 1
            writer.end()

        result = reading.result(timeout=RECV_TIMEOUT)
        assert result.values == ["a", "b"]
        assert result.end == {"type": "end", "next_index": 2}


def test_a_run_whose_worker_stops_heartbeating_fails_and_its_streams_end(
    housekeeping_server: ServerProcess, background: ThreadPoolExecutor
) -> None:
    server = housekeeping_server
    with server.client() as client:
        task = unique("lost")
        run_id, _ = trigger(client, task)
        claimed = client.post("/api/v1/runs/claim", json={"worker_id": "w", "task_ids": [task]})
        assert [run["id"] for run in claimed.json()["runs"]] == [run_id]
        with Writer(server, run_id, "k", "w") as writer:
            writer.write(0, ["partial"])
            writer.end()
        reading = read_in_background(background, server, run_id, "k")

        result = reading.result(timeout=RECV_TIMEOUT)
        run = client.get(f"/api/v1/runs/{run_id}").json()
        late_heartbeat = client.post(f"/api/v1/runs/{run_id}/heartbeat", json={"worker_id": "w"})

    assert result.values == ["partial"]
    assert result.end == {"type": "end", "next_index": 1}
    assert run["status"] == "FAILED"
    assert run["error"]["name"] == "WorkerLost"
    assert late_heartbeat.status_code == 200
    assert late_heartbeat.json()["status"] == "FAILED"


# -- limits and bad requests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with small chunk and stream limits."""
    server = start_server(
        tmp_path_factory.mktemp("limited"),
        env={
            "RUNSTREAM_MAX_CHUNK_BYTES": str(CHUNK_LIMIT),
            "RUNSTREAM_MAX_STREAM_BYTES": str(STREAM_LIMIT),
        },
    )
    yield server
    server.stop()


@pytest.fixture
def limited_client(limited_server: ServerProcess) -> Iterator[httpx.Client]:
    with limited_server.client() as client:
        yield client


def text_of_size(size: int) -> str:
    """A string chunk whose JSON text is exactly ``size`` bytes."""
    return "x" * (size - 2)


def test_a_chunk_over_the_limit_is_4413_and_stores_nothing(
    limited_server: ServerProcess, limited_client: httpx.Client
) -> None:
    run_id, _ = trigger(limited_client, unique("big"))
    largest = text_of_size(CHUNK_LIMIT)

    with Writer(limited_server, run_id, "k", "w") as writer:
        assert writer.write(0, ["small", largest]) == 1
        code, reason = writer.refused(
            {"type": "chunks", "seq": 2, "chunks": ["fine", text_of_size(CHUNK_LIMIT + 1)]}
        )

    assert code == 4413
    assert reason is not None and f"limit of {CHUNK_LIMIT} bytes" in reason
    assert stored(limited_client, run_id, "k") == ["small", largest]
    with Writer(limited_server, run_id, "k", "w") as again:
        assert again.last_seq == 1


def test_a_chunk_over_the_limit_over_http_is_413_and_stores_nothing(
    limited_client: httpx.Client,
) -> None:
    run_id, _ = trigger(limited_client, unique("bighttp"))
    url = stream_url(run_id, "k")
    assert post_json(limited_client, url, ["small"]).status_code == 204

    response = post_json(limited_client, url, ["fine", text_of_size(CHUNK_LIMIT + 1)])

    assert response.status_code == 413
    assert f"limit of {CHUNK_LIMIT} bytes" in response.text
    assert stored(limited_client, run_id, "k") == ["small"]


def test_a_refused_first_write_over_http_creates_no_stream(
    limited_client: httpx.Client,
) -> None:
    run_id, _ = trigger(limited_client, unique("firstbig"))

    response = post_json(limited_client, stream_url(run_id, "new"), [text_of_size(CHUNK_LIMIT + 1)])

    assert response.status_code == 413
    assert stream_details(limited_client, run_id) == {}
    assert limited_client.head(stream_url(run_id, "new")).status_code == 404


def test_a_stream_over_its_size_limit_is_4413_and_413(
    limited_server: ServerProcess, limited_client: httpx.Client
) -> None:
    run_id, _ = trigger(limited_client, unique("full"))
    chunk = text_of_size(1000)

    with Writer(limited_server, run_id, "k", "w") as writer:
        assert writer.write(0, [chunk] * 4) == 3
        code, reason = writer.refused({"type": "chunks", "seq": 4, "chunks": [chunk]})
    response = post_json(limited_client, stream_url(run_id, "k"), [chunk])

    assert code == 4413
    assert reason is not None and f"limit of {STREAM_LIMIT} bytes" in reason
    assert response.status_code == 413
    assert f"limit of {STREAM_LIMIT} bytes" in response.text
    assert stored(limited_client, run_id, "k") == [chunk] * 4
    assert stream_details(limited_client, run_id)["k"]["bytes"] == 4000
    assert post_json(limited_client, stream_url(run_id, "k"), ["x" * 90]).status_code == 204


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("has space", "invalid stream key"),
        ("k" * 200, "invalid stream key"),
        ("-dash", "invalid stream key"),
    ],
)
def test_a_bad_stream_key_is_4400_and_400(
    server: ServerProcess, client: httpx.Client, key: str, message: str
) -> None:
    run_id, _ = trigger(client, unique("badkey"))

    reading = read(server, run_id, key)
    append = append_refused(server, run_id, key, AUTH, {"type": "chunks", "seq": 0, "chunks": [1]})
    response = post_json(client, stream_url(run_id, quote(key)), [1])

    assert reading.code == 4400 and message in (reading.reason or "")
    assert append[0] == 4400 and message in (append[1] or "")
    assert response.status_code == 400 and message in response.text
    assert stream_details(client, run_id) == {}


def test_a_bad_run_id_is_4400_and_400(server: ServerProcess, client: httpx.Client) -> None:
    bad = "not-a-run"

    reading = read(server, bad, "k")
    append = append_refused(server, bad, "k", AUTH, {"type": "chunks", "seq": 0, "chunks": [1]})
    response = post_json(client, stream_url(bad, "k"), [1])
    api = client.get(f"/api/v1/runs/{bad}")

    assert reading.code == 4400 and "invalid run id" in (reading.reason or "")
    assert append[0] == 4400 and "invalid run id" in (append[1] or "")
    assert response.status_code == 400 and "invalid run id" in response.text
    assert api.status_code == 400 and "invalid run id" in api.json()["error"]


def test_a_run_that_does_not_exist_is_4404_and_404(
    server: ServerProcess, client: httpx.Client
) -> None:
    missing = "run_" + "0" * 24

    reading = read(server, missing, "k")
    append = append_refused(server, missing, "k", AUTH, {"type": "chunks", "seq": 0, "chunks": [1]})
    response = post_json(client, stream_url(missing, "k"), [1])
    api = client.get(f"/api/v1/runs/{missing}")

    assert reading.code == 4404 and "does not exist" in (reading.reason or "")
    assert append[0] == 4404 and "does not exist" in (append[1] or "")
    assert response.status_code == 404
    assert api.status_code == 404 and "does not exist" in api.json()["error"]
    assert client.head(stream_url(missing, "k")).status_code == 404


# -- run streams over the Durable Streams protocol -------------------------------------------


def test_run_streams_over_the_durable_streams_protocol(
    server: ServerProcess, client: httpx.Client
) -> None:
    """POST creates a run stream on its first write; websocket and HTTP writes land in the same
    stream; GET /api/v1/runs/<id> lists each stream with its size."""
    task = unique("protocol")
    run_id, _ = trigger(client, task)
    url = stream_url(run_id, "events")

    first = client.post(url, content=b'[{"a": 1}, 2]', headers={"Content-Type": JSON})
    assert first.status_code == 204
    assert client.head(url).headers["Content-Type"] == JSON
    with Writer(server, run_id, "events", "ws") as writer:
        assert writer.last_seq == -1
        writer.write(0, ["three", {"four": 4}])
        writer.end()
    with Writer(server, run_id, "default", "ws") as writer:
        writer.write(0, ["d"])

    assert stored(client, run_id, "events") == [{"a": 1}, 2, "three", {"four": 4}]
    assert read(server, run_id, "events", stop_after=4).values == [
        {"a": 1},
        2,
        "three",
        {"four": 4},
    ]
    expected_bytes = len(b'{"a": 1}') + len(b"2") + len(b'"three"') + len(b'{"four":4}')
    assert stream_details(client, run_id) == {
        "default": {"key": "default", "chunk_count": 1, "bytes": 3, "closed": False},
        "events": {"key": "events", "chunk_count": 4, "bytes": expected_bytes, "closed": False},
    }

    closing = client.post(url, headers={"Stream-Closed": "true"})
    assert closing.status_code == 204
    assert stream_details(client, run_id)["events"]["closed"] is True
    ended = read(server, run_id, "events", start_index=4)
    assert (ended.chunks, ended.end) == ([], {"type": "end", "next_index": 4})


def test_a_run_stream_must_be_json(client: httpx.Client) -> None:
    run_id, _ = trigger(client, unique("text"))

    response = client.put(stream_url(run_id, "text"), headers={"Content-Type": "text/plain"})

    assert response.status_code == 400
    assert "JSON" in response.text
    assert stream_details(client, run_id) == {}


# -- expiry ----------------------------------------------------------------------------------

RETENTION_ENV = {"RUNSTREAM_RUN_STREAM_RETENTION_DAYS": "0.00002"}  # 1.728 s, stored as 1 s


@pytest.fixture(scope="module")
def retention_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose run streams expire about a second after their last write."""
    server = start_server(tmp_path_factory.mktemp("retention"), env=RETENTION_ENV)
    yield server
    server.stop()


def purge(instance_path: Path) -> subprocess.CompletedProcess[str]:
    """`runstream purge` on a server's instance folder, with that server's settings."""
    return subprocess.run(
        [sys.executable, "-m", "runstream.server", "purge"],
        env={
            **os.environ,
            "RUNSTREAM_INSTANCE_PATH": str(instance_path),
            "RUNSTREAM_SECRET_KEY": SECRET_KEY,
            **RETENTION_ENV,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stream_rows(instance_path: Path, path: str) -> int:
    with contextlib.closing(sqlite3.connect(instance_path / "runstream.sqlite3")) as db:
        count: int = db.execute("SELECT count(*) FROM streams WHERE path = ?", (path,)).fetchone()[
            0
        ]
        return count


def test_a_run_stream_past_its_retention_reads_as_404(retention_server: ServerProcess) -> None:
    with retention_server.client() as client:
        run_id, _ = trigger(client, unique("expire"))
        assert post_json(client, stream_url(run_id, "k"), ["old"]).status_code == 204
        assert stored(client, run_id, "k") == ["old"]
        time.sleep(1.3)

        response = client.get(stream_url(run_id, "k"), params={"offset": "-1"})
        details = stream_details(client, run_id)
        rewritten = post_json(client, stream_url(run_id, "k"), ["new"])
        after_rewrite = stored(client, run_id, "k")

    assert response.status_code == 404
    assert "does not exist" in response.text
    assert details == {}
    assert rewritten.status_code == 204
    assert after_rewrite == ["new"]


def test_purge_deletes_expired_run_streams(retention_server: ServerProcess) -> None:
    with retention_server.client() as client:
        run_id, _ = trigger(client, unique("purge"))
        assert post_json(client, stream_url(run_id, "k"), ["old"]).status_code == 204
    path = f"runs/{run_id}/k"
    assert stream_rows(retention_server.instance_path, path) == 1
    time.sleep(1.3)

    result = purge(retention_server.instance_path)

    assert result.returncode == 0, result.stderr
    # Other tests on this server leave expired streams too: this one is among those deleted.
    deleted = re.search(r"deleted (\d+) expired streams", result.stdout)
    assert deleted is not None and int(deleted.group(1)) >= 1, result.stdout
    assert stream_rows(retention_server.instance_path, path) == 0
