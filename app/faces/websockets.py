"""Run streams over websockets: ``/realtime/v2/streams/<run_id>/<key>`` to read, and
``.../append`` to write. The frame format is documented in docs/websocket-protocol.md.

Every frame is a JSON text message. Chunks travel as JSON values; the reader's frames carry the
index of their first chunk, and a writer numbers its chunks, so both sides resume exactly after a
lost connection. A refusal closes the connection with the close code of
:mod:`runstream.server.faces.errors`' table (the codes themselves are in :mod:`runstream.wire`)
and a reason that says what was wrong; a reader that timed out is closed with 4408.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import gevent
from flask import Flask, request
from flask_sock import ConnectionClosed, Sock
from gevent import monkey
from wsproto.events import CloseConnection, Ping
from wsproto.utilities import LocalProtocolError

from runstream.identifiers import check_run_id, check_stream_key
from runstream.whole_sends import send_whole
from runstream.wire import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID,
    CLOSE_NORMAL,
    CLOSE_NOT_PERMITTED,
    CLOSE_TIMEOUT,
    MAX_CHUNKS_PER_FRAME,
    MAX_READER_FRAME_BYTES,
    READER_FRAME_OVERHEAD,
)

from ..core import inputs
from ..core.errors import Invalid, TooLarge
from ..core.follower import Batch, Follower
from ..core.json_messages import MAX_DEPTH, parse_strict
from ..runs.run_streams import RunStreamReading
from ..runtime import runtime, runtime_of
from . import live
from .errors import REFUSALS, answer_for, message_of
from .requests import caller

STREAMS_PREFIX = "/realtime/v2/streams/"
READ_ROUTE = STREAMS_PREFIX + "<run_id>/<key>"
APPEND_ROUTE = "/realtime/v2/streams/<run_id>/<key>/append"
MAX_READ_TIMEOUT = 600
DEFAULT_READ_TIMEOUT = 60
# How long a writer may take to say hello after connecting.
HELLO_TIMEOUT = 30.0
# How long a closing connection waits for its client to answer the close.
CLOSING_SECONDS = 2.0

# How a connection whose client went away shows: a closed websocket, a socket that is gone, or
# a frame the protocol can no longer send.
CONNECTION_GONE = (ConnectionClosed, OSError, LocalProtocolError)

sock = Sock()
log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    # Frames of a writer may carry many chunks: allow as much as one HTTP append may.
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {
            "max_message_size": runtime_of(app).settings.max_append_bytes,
            "event_class": TakingTurns,
            "thread_class": Greenlet if monkey.is_module_patched("threading") else threading.Thread,
        },
    )
    sock.init_app(app)
    app.before_request(uncompressed)


def uncompressed() -> None:
    """Run streams' connections are not compressed. A reader's frame is built once and sent
    as it is to every reader, where per-connection compression would compress each frame once
    per reader (more than twice the server's work per delivered chunk, measured); and for a
    writer, compressing its small acknowledgements cost as much as storing its chunks. The
    websocket library accepts whatever extension the client offers, so the offer is removed
    before the handshake."""
    if request.path.startswith(STREAMS_PREFIX):
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


class Closing(Exception):
    """End the websocket with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


Handler = Callable[[Any, str, str], None]


def websocket_route(path: str) -> Callable[[Handler], Handler]:
    return cast(Callable[[Handler], Handler], sock.route(path))


def guarded(handler: Handler) -> Handler:
    """Run a websocket handler, turning every way it can end into a close code and reason."""

    def run(ws: Any, run_id: str, key: str) -> None:
        send_whole(ws)
        try:
            handler(ws, run_id, key)
        except Closing as closing:
            close(ws, closing.code, closing.reason)
        except REFUSALS as error:
            close(ws, answer_for(error).close_code, message_of(error))
        except CONNECTION_GONE:
            # The client went away, perhaps while a frame was being sent to it; or the
            # connection's reader ended it (the client's close, a protocol violation, a message
            # too big) and has yet to send its close frame: it woke this handler first (see
            # TakingTurns), and the socket must outlive that send.
            wait_for_reader(ws)
        except Exception:
            # Never let an error escape: the server would write an HTTP 500 into the websocket.
            log.exception("websocket handler failed")
            close(ws, CLOSE_INTERNAL_ERROR, "internal server error")

    run.__name__ = handler.__name__
    return run


def close(ws: Any, code: int, reason: str) -> None:
    """Close with ``code`` and ``reason``, and wait (briefly) for the client's close in answer,
    as RFC 6455 has it. Meanwhile the connection's reader goes on reading what the client still
    sends: a socket closed with unread data ends in a reset, which would lose the close frame on
    its way to a client that sends fast (a reader's client that floods, say)."""
    if not ws.connected:
        return
    # A close reason must fit in a control frame: 123 bytes of UTF-8.
    encoded = reason.encode()[:123].decode("utf-8", "ignore")
    with contextlib.suppress(*CONNECTION_GONE):
        ws.sock.send(ws.ws.send(CloseConnection(code, encoded)))
        # The client's close ends the connection's reader, which then says it is no longer
        # connected; a client that does not answer is left after CLOSING_SECONDS.
        deadline = time.monotonic() + CLOSING_SECONDS
        while ws.connected and time.monotonic() < deadline:
            time.sleep(0.02)
    ws.connected = False


# -- reading ---------------------------------------------------------------------------------


@websocket_route(READ_ROUTE)
@guarded
def read_stream(ws: Any, run_id: str, key: str) -> None:
    """Send the stream from ``start_index``, then each chunk as it is written, then the end."""
    check_run_id(run_id)
    check_stream_key(key)
    caller().require_run(run_id)
    position = inputs.whole_number("start_index", request.args.get("start_index", "0"))
    timeout = inputs.whole_number(
        "timeout_in_seconds",
        request.args.get("timeout_in_seconds", str(DEFAULT_READ_TIMEOUT)),
        minimum=1,
        maximum=MAX_READ_TIMEOUT,
    )

    app_runtime = runtime()
    reading = RunStreamReading(
        app_runtime.run_streams, run_id, key, app_runtime.settings.max_read_bytes
    )
    keepalive = app_runtime.settings.keepalive
    deadline = time.monotonic() + timeout
    with Follower(app_runtime.hub, reading.path, position, reading.read) as follower:
        # The websocket's own thread wakes the follower when the client sends a frame or goes
        # away, so that neither waits for a timer.
        ws.event = _Waker(follower.wake)
        batch: Batch | None = follower.first()
        reader: live.LiveReader | None = None  # a place in the budget once it has to wait
        try:
            while True:
                check_reader(ws)
                if batch is not None and batch.messages:
                    for frame in frames_of(batch):
                        ws.send(frame)
                    deadline = time.monotonic() + timeout
                if batch is not None and batch.reached_end:
                    end(ws, batch.next_position)
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Closing(CLOSE_TIMEOUT, f"no data for {timeout} seconds")
                reader = reader or live.admit(None)
                keepalive_at = time.monotonic() + keepalive
                batch = follower.next(min(remaining, keepalive))
                if batch is None and time.monotonic() >= keepalive_at:
                    ping(ws)
        finally:
            if reader is not None:
                reader.close()


def wait_for_reader(ws: Any) -> None:
    """Let the connection's reader, which ended the connection, finish: it sends its close
    frame (answering the client's, or failing a protocol violation with 1002, 1007 or 1009)
    only after waking the handler, and the server closes the socket once the handler returns."""
    reader = getattr(ws, "thread", None)
    if reader is not None and not ws.connected:
        reader.join(CLOSING_SECONDS)


def ping(ws: Any) -> None:
    """A ping frame, so that proxies see traffic on an idle connection (the client's websocket
    library answers it by itself)."""
    ws.sock.send(ws.ws.send(Ping()))


class Greenlet:
    """What runs a connection's reader (simple-websocket's ``thread_class``) under gevent: a
    bare greenlet, where a patched thread costs 2.6 KiB more per connection (measured) for its
    bookkeeping."""

    name = "simple_websocket reader"

    def __init__(self, target: Callable[[], None]) -> None:
        self._target = target
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._target)

    def join(self, timeout: float | None = None) -> None:
        if self._greenlet is not None:
            self._greenlet.join(timeout)


# A sleep that lasts until gevent's loop has polled for I/O once (see take_turn).
NEXT_TURN = 1e-6


class TakingTurns(threading.Event):
    """simple-websocket's event of a connection, which the connection's reader sets on every
    message it receives; setting it also gives every other greenlet a turn. Under gevent a
    reader whose socket always has data to read would otherwise never yield: one client sending
    fast would hold the whole process, its own handler included, for as long as it sent."""

    def set(self) -> None:
        super().set()
        take_turn()


def take_turn() -> None:
    """Let every other greenlet run, those waiting on a socket too. gevent's ``sleep(0)`` runs
    only the greenlets ready now: a reader whose client always has more to send would starve
    those that wait for I/O (a handler waiting for the database's answer, say, while its own
    client floods it), until the client stopped. A timer, however short, waits for the loop's
    next turn, which polls for I/O first. (Waiting for the loop to be idle could wait for ever
    on a busy server.)"""
    time.sleep(NEXT_TURN if monkey.is_module_patched("time") else 0)


class _Waker:
    """Stands in for a reader connection's event (simple-websocket's ``Base.event``): its
    reader wakes the follower on every frame and at the end of the connection, then lets the
    handler run (see :class:`TakingTurns`), which closes a reader that sends frames."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def set(self) -> None:
        self._wake()
        take_turn()


def check_reader(ws: Any) -> None:
    """A reader's client only listens: a frame from it is refused, never kept."""
    if ws.input_buffer:
        ws.input_buffer.clear()
        raise Closing(CLOSE_INVALID, "this connection only reads the stream: send no frames")
    if not ws.connected:
        raise ConnectionClosed(None, None)


def frames_of(batch: Batch) -> list[str]:
    """A batch as reader frames, built once for all the readers that send it."""
    return cast(
        list[str],
        batch.encoded("ws-frames", lambda: chunks_frames(batch.first_position, batch.messages)),
    )


def chunks_frames(index: int, messages: Sequence[bytes]) -> list[str]:
    """``{"type": "chunks", "index": <first chunk's index>, "chunks": [...]}`` frames of at most
    MAX_READER_FRAME_BYTES each, built from the stored JSON text without decoding it."""
    frames: list[str] = []
    start = 0
    while start < len(messages):
        size, end_ = READER_FRAME_OVERHEAD, start
        while end_ < len(messages) and (
            end_ == start or size + len(messages[end_]) + 1 <= MAX_READER_FRAME_BYTES
        ):
            size += len(messages[end_]) + 1
            end_ += 1
        frames.append(
            f'{{"type":"chunks","index":{index + start},"chunks":['
            + ",".join(message.decode() for message in messages[start:end_])
            + "]}"
        )
        start = end_
    return frames


def end(ws: Any, next_index: int) -> None:
    ws.send(json.dumps({"type": "end", "next_index": next_index}))
    close(ws, CLOSE_NORMAL, "stream ended")


# -- writing ---------------------------------------------------------------------------------


class LiveWriters:
    """The live connection of each writer id in this process: a newer connection with the same
    writer id takes over, and the older one is closed. (Across processes the store's epochs
    fence the older one off at its next write.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, str, str], Any] = {}

    def take(self, identity: tuple[str, str, str], ws: Any) -> None:
        with self._lock:
            older = self._connections.get(identity)
            self._connections[identity] = ws
        if older is not None:
            close(
                older,
                CLOSE_NOT_PERMITTED,
                f"writer {identity[2]!r} was taken over by a newer connection",
            )

    def release(self, identity: tuple[str, str, str], ws: Any) -> None:
        with self._lock:
            if self._connections.get(identity) is ws:
                del self._connections[identity]


live_writers = LiveWriters()


@websocket_route(APPEND_ROUTE)
@guarded
def append_stream(ws: Any, run_id: str, key: str) -> None:
    """A writer: hello, then numbered chunks (each frame acknowledged), then end."""
    check_run_id(run_id)
    check_stream_key(key)
    caller().require_secret("writing a stream")
    run_streams = runtime().run_streams
    writer_timeout = runtime().settings.writer_timeout

    hello = receive_frame(ws, HELLO_TIMEOUT)
    if hello is None or hello.get("type") != "hello":
        raise Invalid('the first frame must be {"type": "hello", "writer_id": "..."}')
    writer_id = hello.get("writer_id")
    if not isinstance(writer_id, str) or not writer_id:
        raise Invalid("hello needs a writer_id: a non-empty string naming this writer")
    session = run_streams.open_writer(run_id, key, writer_id)
    identity = (run_id, key, writer_id)
    live_writers.take(identity, ws)
    try:
        ws.send(json.dumps({"type": "ready", "last_seq": session.last_seq}))
        write_frames(ws, run_id, key, writer_id, session.epoch, writer_timeout)
    finally:
        live_writers.release(identity, ws)


def write_frames(
    ws: Any, run_id: str, key: str, writer_id: str, epoch: int, writer_timeout: float
) -> None:
    run_streams = runtime().run_streams
    while True:
        # A writer that stays connected keeps its stream open even while it is quiet.
        frame = receive_frame(ws, writer_timeout / 4)
        if frame is None:
            run_streams.keep_writer(run_id, key, writer_id, epoch)
            continue
        kind = frame.get("type")
        if kind == "chunks":
            chunks = frame.get("chunks")
            try:
                first_seq = inputs.json_whole_number("seq", frame.get("seq"))
            except Invalid:
                raise Invalid(
                    "a chunks frame needs seq: the number of its first chunk, from 0 to "
                    f"{inputs.MAX_SAFE_INTEGER}"
                ) from None
            if not isinstance(chunks, list) or not chunks:
                raise Invalid("a chunks frame needs chunks: a non-empty list of JSON values")
            if len(chunks) > MAX_CHUNKS_PER_FRAME:
                raise TooLarge(
                    f"a chunks frame of {len(chunks)} chunks is more than the limit of "
                    f"{MAX_CHUNKS_PER_FRAME}: send them in several frames"
                )
            # Stored, or refused (a newer session fences this one): only then acknowledged.
            result = run_streams.write(run_id, key, writer_id, epoch, first_seq, chunks)
            ws.send(json.dumps({"type": "ack", "seq": result.producer_seq}))
        elif kind == "end":
            run_streams.close_writer(run_id, key, writer_id)
            ws.send(json.dumps({"type": "ended"}))
            close(ws, CLOSE_NORMAL, "writer finished")
            return
        else:
            raise Invalid(f"unknown frame type {kind!r}: send chunks or end")


def receive_frame(ws: Any, timeout: float) -> dict[str, Any] | None:
    """The next frame as a JSON object; None if none came within ``timeout`` seconds."""
    text = ws.receive(timeout=timeout)
    if text is None:
        if not ws.connected:
            raise ConnectionClosed(None, None)
        return None
    if isinstance(text, bytes):
        raise Invalid("frames must be text messages of JSON; this one is binary")
    try:
        # A chunk sits two levels down in its frame, and may nest as deep as over HTTP.
        frame = parse_strict(text, max_depth=MAX_DEPTH + 2)
    except Invalid as error:
        raise Invalid(f"frames must be JSON text; this one is {error.message}") from None
    if not isinstance(frame, dict):
        raise Invalid("frames must be JSON objects with a type")
    return frame
