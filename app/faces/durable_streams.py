"""The Durable Streams HTTP protocol, mounted at ``/v1/stream/<path>``.

A thin face over the store: this module turns headers and query parameters into store calls and
store results into status codes and headers. It holds no stream state of its own. Live reads
(long-poll and SSE) follow the stream through the core's follower, which takes what the hub
delivers with each commit and shares each batch's encoding among all its readers.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, request

from runstream.wire import MAX_RUN_CHUNK_BYTES

from ..core import inputs, offsets
from ..core.clock import format_timestamp
from ..core.content_types import DEFAULT, is_json, is_text
from ..core.errors import Invalid
from ..core.follower import Batch, Follower, batch_of
from ..core.json_messages import join_messages, split_messages
from ..core.store import (
    AppendRequest,
    CreateRequest,
    ForkRequest,
    ProducerClaim,
    Store,
    StreamInfo,
)
from ..core.store.rows import MAX_MESSAGES_PER_APPEND
from ..runs.run_streams import parse_stream_path
from ..runtime import runtime
from . import cursors, live
from .errors import REFUSALS, answer_for, http_headers, message_of, protocol_headers
from .requests import caller, read_body

PREFIX = "/v1/stream/"
blueprint = Blueprint("protocol", __name__, url_prefix=PREFIX.rstrip("/"))

# Producer-Epoch and Producer-Seq must fit a JavaScript number exactly.
MAX_SAFE_INTEGER = inputs.MAX_SAFE_INTEGER
# A catch-up read (no ``live``) is answered with the whole stream from its offset, up to this
# many bytes (None: the stream size limit, RUNSTREAM_MAX_STREAM_BYTES, so always the whole
# stream). Both official clients end a catch-up read after its first response, up to date or
# not, as the reference server always answers with everything. The body is streamed from the
# database in pages of about RUNSTREAM_MAX_READ_BYTES, so memory stays bounded whatever the
# size. (To become the setting RUNSTREAM_MAX_CATCH_UP_READ_BYTES.)
MAX_CATCH_UP_READ_BYTES: int | None = None

_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
EXPOSED_HEADERS = ", ".join(
    [
        "Stream-Next-Offset",
        "Stream-Up-To-Date",
        "Stream-Closed",
        "Stream-Cursor",
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-SSE-Data-Encoding",
        "Producer-Epoch",
        "Producer-Seq",
        "Producer-Expected-Seq",
        "Producer-Received-Seq",
        "ETag",
        "Location",
    ]
)


# -- responses -------------------------------------------------------------------------------


def refused(error: Exception) -> Response:
    response = error_response(answer_for(error).status, message_of(error))
    response.headers.update(protocol_headers(error))
    response.headers.update(http_headers(error))
    return response


for refusal in REFUSALS:
    blueprint.register_error_handler(refusal, refused)


@blueprint.before_request
def valid_path() -> None:
    """Refuse a stream path whose percent-decoding is not UTF-8.

    The WSGI server hands the decoded path's bytes over as latin-1 text, and Werkzeug decodes
    them as UTF-8 replacing what is not: ``a%FFb``, ``a%FEb`` and ``a%EF%BF%BDb`` would all
    name the stream ``a\ufffdb``. The path as sent (``RAW_URI``, which gunicorn and Werkzeug
    set; some servers replace in PATH_INFO already) is checked, and PATH_INFO's bytes too.
    """
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    try:
        unquote_to_bytes(raw.split("?", 1)[0]).decode("utf-8")
        environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise Invalid(
            "the stream path is not valid UTF-8 once percent-decoded: percent-encode the "
            "UTF-8 bytes of each character"
        ) from None


def error_response(status: int, message: str) -> Response:
    response = Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.after_request
def security_headers(response: Response) -> Response:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    headers["Access-Control-Allow-Origin"] = "*"
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response


def empty_response(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def stream_headers(response: Response, next_position: int, *, closed: bool) -> None:
    response.headers["Stream-Next-Offset"] = offsets.encode(next_position)
    if closed:
        response.headers["Stream-Closed"] = "true"


# -- routes ----------------------------------------------------------------------------------


@blueprint.route("/<path:path>", methods=["PUT", "POST", "GET", "HEAD", "DELETE", "OPTIONS"])
def stream(path: str) -> Response:
    if request.method == "OPTIONS":
        return preflight()
    authorize(path)
    store = runtime().store
    match request.method:
        case "PUT":
            return create(store, path)
        case "POST":
            return append(store, path)
        case "GET":
            return read(store, path)
        case "HEAD":
            return head(store, path)
        case _:
            store.delete(path)
            return empty_response(204)


def authorize(path: str) -> None:
    """Writes need the secret key; a run's streams may be read with a token for that run."""
    principal = caller()
    run_stream = parse_stream_path(path)
    if request.method not in ("GET", "HEAD"):
        principal.require_secret("writing or deleting a stream")
    elif run_stream is not None:
        principal.require_run(run_stream[0])
    else:
        principal.require_secret("reading a stream that belongs to no run")


def preflight() -> Response:
    response = empty_response(204)
    response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "*"
    )
    response.headers["Access-Control-Max-Age"] = "86400"
    return response


def create(store: Store, path: str) -> Response:
    content_type = request.headers.get("Content-Type") or DEFAULT
    ttl, expires_at = parse_expiry()
    fork = parse_fork()
    if fork is not None and "Content-Type" not in request.headers:
        content_type = inherited_content_type(store, fork)
    body = read_body()
    run_stream = parse_stream_path(path)
    max_message_bytes = MAX_RUN_CHUNK_BYTES if run_stream is not None else None
    messages = (
        parse_messages(
            content_type, body, allow_empty_batch=True, max_message_bytes=max_message_bytes
        )
        if body
        else []
    )
    retention = None
    if run_stream is not None:
        runtime().run_streams.check_new_stream(*run_stream, content_type=content_type)
        retention = runtime().settings.run_stream_retention_seconds
    result = store.create(
        path,
        CreateRequest(
            content_type=content_type,
            messages=messages,
            ttl_seconds=ttl,
            expires_at=expires_at,
            retention_seconds=retention,
            closed=header_is_true("Stream-Closed"),
            fork=fork,
            max_message_bytes=max_message_bytes,
        ),
    )
    info = result.stream
    response = Response(status=201 if result.created else 200)
    response.headers["Content-Type"] = info.content_type
    stream_headers(response, info.next_position, closed=info.closed)
    if result.created:
        response.headers["Location"] = request.base_url
    return response


def inherited_content_type(store: Store, fork: ForkRequest) -> str:
    """A fork created without a Content-Type has its source's.

    An empty string leaves it to the store to say why the source cannot be forked.
    """
    try:
        return store.head(fork.source_path).content_type
    except REFUSALS:
        return ""


def append(store: Store, path: str) -> Response:
    close = header_is_true("Stream-Closed")
    body = read_body()
    content_type = request.headers.get("Content-Type")
    if not body and not close:
        raise Invalid("the body is empty: send data to append, or Stream-Closed: true to close")
    if body and not content_type:
        raise Invalid("Content-Type is required when appending data")
    claim = parse_producer()
    run_stream = parse_stream_path(path)
    # A run stream's chunk must fit a websocket reader's frame.
    max_message_bytes = MAX_RUN_CHUNK_BYTES if run_stream is not None else None
    messages = (
        parse_messages(
            content_type or DEFAULT,
            body,
            allow_empty_batch=False,
            max_message_bytes=max_message_bytes,
        )
        if body
        else []
    )
    # A run's stream is created by its first write (and not by one that is refused).
    creation = runtime().run_streams.creation(*run_stream) if run_stream is not None else None
    result = store.append(
        path,
        AppendRequest(
            messages=messages,
            content_type=content_type,
            producer=claim,
            stream_seq=request.headers.get("Stream-Seq"),
            close=close,
            create_if_missing=creation,
            max_message_bytes=max_message_bytes,
        ),
    )
    info = result.stream
    # A producer's new data is 200; its retries, its close-only requests and plain appends, 204.
    response = empty_response(200 if claim is not None and result.stored and messages else 204)
    stream_headers(response, info.next_position, closed=info.closed)
    if claim is not None:
        response.headers["Producer-Epoch"] = str(claim.epoch)
        response.headers["Producer-Seq"] = str(result.producer_seq)
    return response


def head(store: Store, path: str) -> Response:
    info = store.head(path)
    response = Response(status=200)
    response.headers["Content-Type"] = info.content_type
    stream_headers(response, info.next_position, closed=info.closed)
    if info.ttl_seconds is not None:
        response.headers["Stream-TTL"] = str(info.ttl_seconds)
    if info.expires_at is not None:
        response.headers["Stream-Expires-At"] = format_timestamp(info.expires_at)
    response.headers["Cache-Control"] = "no-store"
    return response


def read(store: Store, path: str) -> Response:
    live = request.args.get("live")
    if live not in (None, "long-poll", "sse"):
        raise Invalid(f"live must be long-poll or sse, not {live!r}")
    given = request.args.getlist("offset")
    if len(given) > 1:
        raise Invalid("give one offset, not several")
    if not given and live is not None:
        raise Invalid(f"live={live} needs an offset: -1, now, or a Stream-Next-Offset value")
    position = parse_read_offset(given[0] if given else offsets.START)
    settings = runtime().settings
    if live is None:
        return catch_up(store, path, position)
    reading = StreamReading(store, path, settings.max_read_bytes)
    if live == "sse":
        return sse(reading, sse_position(position))
    batch = long_poll(reading, position, settings.long_poll_timeout)
    info = reading.info

    if not batch.messages:
        response = empty_response(204)
        stream_headers(response, batch.next_position, closed=batch.closed)
        response.headers["Stream-Up-To-Date"] = "true"
        if not batch.closed:
            response.headers["Stream-Cursor"] = cursors.next_cursor(request.args.get("cursor"))
        response.headers["Cache-Control"] = "no-store"
        return response

    body = batch.encoded("http-body", lambda: payload(info, batch.messages))
    response = Response(body, status=200, content_type=info.content_type)
    stream_headers(response, batch.next_position, closed=batch.reached_end)
    if batch.up_to_date:
        response.headers["Stream-Up-To-Date"] = "true"
    response.headers["Stream-Cursor"] = cursors.next_cursor(request.args.get("cursor"))
    if position is None:
        response.headers["Cache-Control"] = "no-store"
        return response
    return cacheable(response, f'"{info.id}:{position}:{batch.next_position}', batch.reached_end)


def cacheable(response: Response, etag_start: str, reached_end: bool) -> Response:
    """A read from an explicit offset can be cached: tag it, and answer 304 to a client that
    holds the same answer already."""
    etag = f'{etag_start}{":c" if reached_end else ""}"'
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "private, max-age=60, stale-while-revalidate=300"
    if request.if_none_match.contains_raw(etag):
        not_modified = empty_response(304)
        not_modified.headers["ETag"] = etag
        not_modified.headers["Cache-Control"] = response.headers["Cache-Control"]
        not_modified.headers["Stream-Next-Offset"] = response.headers["Stream-Next-Offset"]
        if reached_end:
            not_modified.headers["Stream-Closed"] = "true"
        return not_modified
    return response


def catch_up(store: Store, path: str, position: int | None) -> Response:
    """A read without ``live``: everything from ``position`` on (up to
    :data:`MAX_CATCH_UP_READ_BYTES`), streamed.

    Which messages the response holds is decided first, from the stored sizes alone, so that
    its headers (next offset, up to date, ETag, length) are known before the body; the body is
    then read page by page, each page in its own short transaction, and never held whole.
    """
    settings = runtime().settings
    limit = MAX_CATCH_UP_READ_BYTES or settings.max_stream_bytes
    plan = store.plan_read(path, position, max_bytes=max(limit, settings.max_read_bytes))
    info = plan.stream
    pages = store.pages(plan, page_bytes=settings.max_read_bytes)
    if info.is_json:
        body: Iterable[bytes] = json_array_body(pages)
        length = plan.size + 2 + max(0, plan.end - plan.start - 1)
    else:
        body = (b"".join(page) for page in pages)
        length = plan.size
    response = Response(body, status=200, content_type=info.content_type)
    # The length lets a client tell a complete body from one cut short (by a stream deleted
    # while its body was being sent).
    response.headers["Content-Length"] = str(length)
    stream_headers(response, plan.end, closed=plan.reached_end)
    if plan.up_to_date:
        response.headers["Stream-Up-To-Date"] = "true"
    if position is None:
        response.headers["Cache-Control"] = "no-store"
        return response
    return cacheable(response, f'"{info.id}:{plan.start}:{plan.end}', plan.reached_end)


def json_array_body(pages: Iterator[list[bytes]]) -> Iterator[bytes]:
    """Pages of JSON messages as the one JSON array a JSON stream's read answers."""
    yield b"["
    first = True
    for page in pages:
        if page:
            yield (b"" if first else b",") + b",".join(page)
            first = False
    yield b"]"


class StreamReading:
    """How a follower reads a stream through the store; remembers what it last learnt of the
    stream itself (its content type, its id)."""

    def __init__(self, store: Store, path: str, max_bytes: int) -> None:
        self.store = store
        self.path = path
        self.max_bytes = max_bytes
        self._info: StreamInfo | None = None

    @property
    def info(self) -> StreamInfo:
        assert self._info is not None, "read the stream first"
        return self._info

    def read(self, position: int | None) -> Batch:
        result = self.store.read(self.path, position, max_bytes=self.max_bytes)
        self._info = result.stream
        return batch_of(result)

    def follower(self, position: int | None) -> Follower:
        return Follower(self.store.hub, self.path, position, self.read)


def payload(info: StreamInfo, messages: Sequence[bytes]) -> bytes:
    """Messages as a read response carries them: a JSON array on a JSON stream, else bytes."""
    return join_messages(list(messages)) if info.is_json else b"".join(messages)


def long_poll(reading: StreamReading, position: int | None, timeout: float) -> Batch:
    """Read at ``position``, waiting up to ``timeout`` seconds for data if there is none yet."""
    deadline = time.monotonic() + timeout
    with reading.follower(position) as follower:
        batch = follower.first()
        if batch.messages or batch.closed:
            return batch
        reader = live.admit(follower.wake)
        try:
            while True:
                news = follower.next(deadline - time.monotonic())
                if news is not None:
                    return news
                if reader.client_gone or time.monotonic() >= deadline:
                    return batch
        finally:
            reader.close()


def sse_position(position: int | None) -> int | None:
    """Where an SSE read starts: a browser's ``EventSource`` reconnects to the URL it first
    opened, telling the offset it got to as ``Last-Event-ID``; that offset wins."""
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is None or not last_event_id.strip():
        return position
    return offsets.decode(last_event_id.strip())


def sse(reading: StreamReading, position: int | None) -> Response:
    settings = runtime().settings
    follower = reading.follower(position)
    follower.__enter__()  # listen before the first read: no commit slips in between
    try:
        # Fail before the 200 is sent if the stream does not exist or the offset is past its
        # tail, or if the server has no room for another live reader.
        first = follower.first()
        reader = live.admit(follower.wake)
    except BaseException:
        follower.__exit__(None, None, None)
        raise

    def finish() -> None:
        reader.close()
        follower.__exit__(None, None, None)

    info = reading.info
    encode_base64 = not is_text(info.content_type)
    client_cursor = request.args.get("cursor")

    def event(batch: Batch) -> bytes:
        """A data event with the batch, then the control event that tells where to resume
        after it, in one write: a reader never sees data without its offset. Built once per
        batch for all its readers (and once per cursor, which nearly all of them share): for
        300 readers, building and encoding each one's copy cost about 7 % of the server's CPU."""
        cursor = None if batch.reached_end else cursors.next_cursor(client_cursor)

        def build() -> bytes:
            control = control_event(batch, cursor).encode("utf-8")
            if not batch.messages:
                return control
            data: bytes = batch.encoded(
                "sse-data",
                lambda: data_event(payload(info, batch.messages), encode_base64).encode("utf-8"),
            )
            return data + control

        return bytes(batch.encoded(f"sse {cursor}", build))

    def events() -> Iterator[bytes]:
        deadline = time.monotonic() + settings.sse_max_duration
        try:
            yield event(first)
            batch: Batch | None = first
            while batch is None or not batch.reached_end:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                keepalive_at = time.monotonic() + settings.keepalive
                batch = follower.next(min(remaining, settings.keepalive))
                if batch is None:
                    if reader.client_gone:
                        return
                    if keepalive_at <= time.monotonic() < deadline:
                        yield b": keep-alive\n\n"
                    continue
                yield event(batch)
        except REFUSALS:
            return  # deleted or expired while it was followed
        finally:
            finish()

    response = Response(events(), status=200, content_type="text/event-stream")
    # A response closed before its first event never runs the generator's cleanup.
    response.call_on_close(finish)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    if encode_base64:
        response.headers["Stream-SSE-Data-Encoding"] = "base64"
    return response


def data_event(payload: bytes, encode_base64: bool) -> str:
    """An SSE data event. Each line of the payload is one ``data:`` field.

    SSE readers drop one space after ``data:``, so a line that starts with a space gets one more.
    Line breaks inside a text payload all arrive as ``\n``: SSE cannot carry ``\r``.
    """
    if encode_base64:
        text = base64.b64encode(payload).decode("ascii")
    else:
        text = payload.decode("utf-8", "replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fields = "".join(
        f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n" for line in lines
    )
    return "event: data\n" + fields + "\n"


def control_event(batch: Batch, cursor: str | None) -> str:
    """The offset to resume from, also as the event's ``id``: a browser's ``EventSource`` sends
    it back as ``Last-Event-ID`` when it reconnects; and the ``cursor`` to echo (None once the
    stream has reached its end)."""
    next_offset = offsets.encode(batch.next_position)
    control: dict[str, object] = {"streamNextOffset": next_offset}
    if cursor is None:
        control["streamClosed"] = True
        control["upToDate"] = True
    else:
        control["streamCursor"] = cursor
        if batch.up_to_date:
            control["upToDate"] = True
    data = json.dumps(control, separators=(",", ":"))
    # The id goes last: the order of an event's fields means nothing to SSE, but clients that
    # match the event's text expect its data right after its name.
    return f"event: control\ndata:{data}\nid:{next_offset}\n\n"


# -- parsing ---------------------------------------------------------------------------------


def header_is_true(name: str) -> bool:
    return request.headers.get(name, "").strip().lower() == "true"


def parse_read_offset(offset: str) -> int | None:
    """The position to read from; None means the tail (``now``)."""
    if offset == offsets.START:
        return 0
    if offset == offsets.NOW:
        return None
    return offsets.decode(offset)


def parse_messages(
    content_type: str, body: bytes, *, allow_empty_batch: bool, max_message_bytes: int | None = None
) -> list[bytes]:
    """A body's messages: a JSON body's values, or a byte body in pieces of at most a message's
    size, so that a byte body is limited only by the request body limit (clients merge
    concurrent appends into one body, as the official TypeScript client does). The pieces are
    messages like any other: read back, they are the body's bytes in order."""
    if not is_json(content_type):
        piece = min(runtime().settings.max_chunk_bytes, max_message_bytes or len(body) or 1)
        return [body[start : start + piece] for start in range(0, len(body), piece)] or [body]
    messages = split_messages(body, max_messages=MAX_MESSAGES_PER_APPEND)
    if not messages and not allow_empty_batch:
        raise Invalid("an empty JSON array appends nothing; send at least one message")
    return messages


def parse_expiry() -> tuple[int | None, datetime | None]:
    ttl_header = request.headers.get("Stream-TTL")
    expires_header = request.headers.get("Stream-Expires-At")
    if ttl_header is not None and expires_header is not None:
        raise Invalid("send Stream-TTL or Stream-Expires-At, not both")
    ttl = None
    if ttl_header is not None:
        ttl = inputs.whole_number("Stream-TTL (seconds)", ttl_header, canonical=True)
    expires_at = parse_time(expires_header) if expires_header is not None else None
    return ttl, expires_at


def parse_time(value: str) -> datetime:
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise Invalid(
            "Stream-Expires-At must be an RFC 3339 time such as 2030-01-01T00:00:00Z, "
            f"not {value!r}"
        )
    date, clock, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # datetime keeps microseconds: a dot and six digits
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        return datetime.fromisoformat(f"{date}T{clock}{fraction}{zone}").astimezone(UTC)
    except (ValueError, OverflowError) as error:
        raise Invalid(f"Stream-Expires-At {value!r} is not a valid time: {error}") from None


def parse_producer() -> ProducerClaim | None:
    names = ("Producer-Id", "Producer-Epoch", "Producer-Seq")
    values = [request.headers.get(name) for name in names]
    if all(value is None for value in values):
        return None
    if any(value is None for value in values):
        raise Invalid("send Producer-Id, Producer-Epoch and Producer-Seq together, or none")
    producer_id, epoch, seq = (value or "" for value in values)
    if not producer_id:
        raise Invalid("Producer-Id must not be empty")
    return ProducerClaim(
        producer_id, parse_counter("Producer-Epoch", epoch), parse_counter("Producer-Seq", seq)
    )


def parse_counter(name: str, value: str) -> int:
    return inputs.whole_number(name, value, maximum=MAX_SAFE_INTEGER, canonical=True)


def parse_fork() -> ForkRequest | None:
    source = request.headers.get("Stream-Forked-From")
    if source is None:
        if "Stream-Fork-Offset" in request.headers or "Stream-Fork-Sub-Offset" in request.headers:
            raise Invalid("Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From")
        return None
    sub_offset = inputs.whole_number(
        "Stream-Fork-Sub-Offset", request.headers.get("Stream-Fork-Sub-Offset", "0"), canonical=True
    )
    offset = request.headers.get("Stream-Fork-Offset")
    if offset is not None and offset not in (offsets.START, offsets.NOW):
        offsets.decode(offset)
    return ForkRequest(source_path=source_path(source), offset=offset, sub_offset=sub_offset)


def source_path(value: str) -> str:
    """A fork source names a stream by its URL path; accept it with or without the mount point."""
    path = value.split("?", 1)[0]
    prefix = blueprint.url_prefix or ""
    if path.startswith(prefix + "/"):
        path = path[len(prefix) + 1 :]
    return path.lstrip("/")
