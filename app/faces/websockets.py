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
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

from runstream.identifiers import check_run_id, check_stream_key
from runstream.wire import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_TIMEOUT

from ..core.errors import Invalid
from ..core.json_messages import parse_strict
from ..runs.run_streams import RunStreamCursor
from ..runtime import runtime, runtime_of
from .errors import REFUSALS, answer_for, message_of
from .requests import caller

READ_ROUTE = "/realtime/v2/streams/<run_id>/<key>"
APPEND_ROUTE = "/realtime/v2/streams/<run_id>/<key>/append"
MAX_READ_TIMEOUT = 600
DEFAULT_READ_TIMEOUT = 60
# How often a waiting reader checks that its client is still connected.
LIVENESS_CHECK_SECONDS = 1.0
# How long a writer may take to say hello after connecting.
HELLO_TIMEOUT = 30.0

sock = Sock()
log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    # Frames of a writer may carry many chunks: allow as much as one HTTP append may.
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {"max_message_size": runtime_of(app).settings.max_append_bytes},
    )
    sock.init_app(app)


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
        try:
            handler(ws, run_id, key)
        except Closing as closing:
            close(ws, closing.code, closing.reason)
        except REFUSALS as error:
            close(ws, answer_for(error).close_code, message_of(error))
        except ConnectionClosed:
            pass
        except Exception:
            # Never let an error escape: the server would write an HTTP 500 into the websocket.
            log.exception("websocket handler failed")
            close(ws, CLOSE_INTERNAL_ERROR, "internal server error")

    run.__name__ = handler.__name__
    return run


def close(ws: Any, code: int, reason: str) -> None:
    # A close reason must fit in a control frame: 123 bytes of UTF-8.
    encoded = reason.encode()[:123].decode("utf-8", "ignore")
    with contextlib.suppress(ConnectionClosed):
        ws.close(reason=code, message=encoded)


# -- reading ---------------------------------------------------------------------------------


@websocket_route(READ_ROUTE)
@guarded
def read_stream(ws: Any, run_id: str, key: str) -> None:
    """Send the stream from ``start_index``, then each chunk as it is written, then the end."""
    check_run_id(run_id)
    check_stream_key(key)
    caller().require_run(run_id)
    position = whole_number("start_index", request.args.get("start_index", "0"))
    timeout = whole_number(
        "timeout_in_seconds", request.args.get("timeout_in_seconds", str(DEFAULT_READ_TIMEOUT))
    )
    if not 1 <= timeout <= MAX_READ_TIMEOUT:
        raise Invalid(f"timeout_in_seconds must be from 1 to {MAX_READ_TIMEOUT}, not {timeout}")

    app_runtime = runtime()
    cursor = RunStreamCursor(
        app_runtime.run_streams, run_id, key, position, app_runtime.settings.max_read_bytes
    )
    deadline = time.monotonic() + timeout
    with app_runtime.hub.subscribe(cursor.path) as subscription:
        while ws.connected:
            step = cursor.step()
            if step.chunks:
                ws.send(chunks_frame(step.index, step.chunks))
                deadline = time.monotonic() + timeout
            if step.ended:
                end(ws, cursor.position)
                return
            if step.chunks:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Closing(CLOSE_TIMEOUT, f"no data for {timeout} seconds")
            subscription.wait(min(remaining, LIVENESS_CHECK_SECONDS))


def chunks_frame(index: int, messages: list[bytes]) -> str:
    """``{"type": "chunks", "index": <first chunk's index>, "chunks": [...]}``, built from the
    stored JSON text without decoding it."""
    return (
        f'{{"type":"chunks","index":{index},"chunks":['
        + ",".join(message.decode() for message in messages)
        + "]}"
    )


def end(ws: Any, next_index: int) -> None:
    ws.send(json.dumps({"type": "end", "next_index": next_index}))
    close(ws, CLOSE_NORMAL, "stream ended")


# -- writing ---------------------------------------------------------------------------------


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
    last_seq = run_streams.open_writer(run_id, key, writer_id)
    ws.send(json.dumps({"type": "ready", "last_seq": last_seq}))

    while True:
        # A writer that stays connected keeps its stream open even while it is quiet.
        frame = receive_frame(ws, writer_timeout / 4)
        if frame is None:
            run_streams.open_writer(run_id, key, writer_id)
            continue
        kind = frame.get("type")
        if kind == "chunks":
            first_seq, chunks = frame.get("seq"), frame.get("chunks")
            if not isinstance(first_seq, int) or isinstance(first_seq, bool) or first_seq < 0:
                raise Invalid("a chunks frame needs seq: the number of its first chunk, >= 0")
            if not isinstance(chunks, list) or not chunks:
                raise Invalid("a chunks frame needs chunks: a non-empty list of JSON values")
            result = run_streams.write(run_id, key, writer_id, first_seq, chunks)
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
    try:
        frame = parse_strict(text)
    except Invalid as error:
        raise Invalid(f"frames must be JSON text; this one is {error.message}") from None
    if not isinstance(frame, dict):
        raise Invalid("frames must be JSON objects with a type")
    return frame


def whole_number(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise Invalid(f"{name} must be a whole number, not {value!r}")
    return int(value)
