"""The websocket engines: a writer that delivers chunks exactly once, and a reader that resumes.

Both speak the frame format of docs/websocket-protocol.md and survive lost connections: the
writer keeps every chunk until the server acknowledges it and, after reconnecting, learns from
the server which of its chunks are stored and resends only the rest; the reader reconnects at
the index after the last chunk it yielded. Both give up, with an error, only when the server
refuses them (a 4xxx close code) or stays unreachable for ``give_up_after`` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ._config import ClientSettings
from .errors import ApiError, RunstreamError, StreamWriteError
from .reading import ReadProgress
from .wire import CLOSE_NORMAL, CLOSE_TIMEOUT, MAX_CHUNKS_PER_FRAME, encode_chunk, is_refusal

# How long to keep trying to reach the server before a writer or reader fails.
GIVE_UP_AFTER = 30.0
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 2.0
# Writers gather chunks for this long before sending a frame, and never send frames larger
# than this: fewer, larger frames are much faster.
LINGER_SECONDS = 0.02
# How long past its timeout a reader waits for the server to say the read is over.
TIMEOUT_GRACE = 2.0
MAX_FRAME_BYTES = 512 * 1024
# How long a writer waits for the server's reply (its ready, an ack of chunks it sent, its
# ended) before it takes the connection for broken and reconnects: a connection can stay open,
# pings answered, while the server side of it no longer answers.
REPLY_TIMEOUT = 30.0
# How long closing a connection waits for the server's close frame.
CLOSING_WAIT = 2.0


def _refusal(error: BaseException) -> ApiError | None:
    """The server's refusal in a closed connection (a 4xxx code), or None if worth retrying."""
    if isinstance(error, ConnectionClosed) and error.rcvd is not None:
        code = error.rcvd.code
        if is_refusal(code):
            return ApiError(code - 4000, error.rcvd.reason or "refused by the server")
    return None


class _Backoff:
    """Delays between reconnection attempts, and the deadline after which to give up."""

    def __init__(self, give_up_after: float, error_type: type[RunstreamError]) -> None:
        self.give_up_after = give_up_after
        self.error_type = error_type
        self._failing_since: float | None = None
        self._delay = FIRST_RETRY_DELAY

    def succeeded(self) -> None:
        self._failing_since = None
        self._delay = FIRST_RETRY_DELAY

    async def failed(self, error: BaseException, what: str) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since > self.give_up_after:
            raise self.error_type(
                f"{what}: the server was unreachable for {self.give_up_after:g} seconds "
                f"(last error: {error!r})"
            ) from error
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, MAX_RETRY_DELAY)


def _connect(config: ClientSettings, path: str, access_token: str | None = None) -> Any:
    return connect(
        config.websocket_url + path,
        additional_headers=config.headers(access_token),
        proxy=None,
        max_size=None,
        open_timeout=10,
        # Leaving a connection waits this long for the server's answering close: on a stalled
        # connection none comes, and a writer would send nothing for websockets' 10 s default.
        close_timeout=CLOSING_WAIT,
    )


def stream_route(run_id: str, key: str) -> str:
    return f"/realtime/v2/streams/{quote(run_id, safe='')}/{quote(key, safe='')}"


class ChunkWriter:
    """Sends the chunks given to :meth:`write` to one run stream, each exactly once, in order.

    Must be created inside a running event loop; the delivery runs as a task of that loop.
    :meth:`close` flushes, waits for the server to acknowledge every chunk, and tells it this
    writer is done; it raises :class:`StreamWriteError` if that could not be done.
    """

    def __init__(
        self,
        config: ClientSettings,
        run_id: str,
        key: str,
        *,
        give_up_after: float | None = None,
    ) -> None:
        self.run_id = run_id
        self.key = key
        # One writer id for the writer's whole life: it is how the server recognises resends.
        self.writer_id = f"py-{uuid.uuid4().hex}"
        self._config = config
        self._backoff = _Backoff(give_up_after or GIVE_UP_AFTER, StreamWriteError)
        # Chunks not yet acknowledged, as (seq, JSON text), in seq order and numbered without
        # gaps: acknowledgements take from its left end, writes add to its right.
        self._unacknowledged: deque[tuple[int, str]] = deque()
        self._next_seq = 0
        self._closing = False
        self._changed = asyncio.Event()
        # When the oldest sent chunk began waiting for its ack on this connection (None: none).
        self._awaiting_ack_since: float | None = None
        # Delivery starts with the first chunk: a writer that writes nothing touches nothing.
        self._task: asyncio.Task[None] | None = None

    def write(self, chunk: Any) -> None:
        """Queue one JSON value.

        Raises at once, queueing nothing, for what JSON cannot carry: TypeError for objects
        it has no encoding for, ValueError for NaN and infinities and for strings that are not
        valid Unicode (lone surrogates).
        """
        if self._closing:
            raise StreamWriteError("this writer is closed: it accepts no more chunks")
        text = encode_chunk(chunk)
        self._unacknowledged.append((self._next_seq, text))
        self._next_seq += 1
        self._changed.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._deliver())

    async def close(self) -> None:
        self._closing = True
        self._changed.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def failed(self) -> bool:
        """Delivery has stopped for good: the server refused it or stayed unreachable."""
        task = self._task
        return task is not None and task.done() and not task.cancelled() and bool(task.exception())

    async def _deliver(self) -> None:
        path = stream_route(self.run_id, self.key) + "/append"
        what = f"writing stream {self.key!r} of run {self.run_id}"
        while True:
            try:
                async with _connect(self._config, path) as connection:
                    await self._session(connection)
                    return
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as error:
                refusal = _refusal(error)
                if refusal is not None:
                    raise StreamWriteError(f"{what}: {refusal.message}") from refusal
                await self._backoff.failed(error, what)

    async def _session(self, connection: ClientConnection) -> None:
        await connection.send(json.dumps({"type": "hello", "writer_id": self.writer_id}))
        ready = json.loads(await asyncio.wait_for(connection.recv(), REPLY_TIMEOUT))
        outstanding = len(self._unacknowledged)
        self._acknowledge(int(ready["last_seq"]))
        if len(self._unacknowledged) < outstanding:
            self._backoff.succeeded()  # chunks whose ack was lost were stored: progress
        receiving = asyncio.create_task(self._receive_acknowledgements(connection))
        try:
            sent_through = ready["last_seq"]
            while True:
                unsent = self._sent_after(sent_through)
                if unsent:
                    sent_through = await self._send_frames(connection, unsent)
                    self._awaiting_ack_since = self._awaiting_ack_since or time.monotonic()
                    continue
                if self._closing and not self._unacknowledged:
                    await connection.send(json.dumps({"type": "end"}))
                    # Until the server's "ended" and close.
                    await asyncio.wait_for(asyncio.shield(receiving), REPLY_TIMEOUT)
                    return
                self._changed.clear()
                waiting = asyncio.create_task(self._changed.wait())
                await asyncio.wait(
                    {waiting, receiving},
                    timeout=self._ack_due_in(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken = waiting.done()
                waiting.cancel()
                if receiving.done():
                    receiving.result()  # a lost connection raises here
                    raise ConnectionClosed(None, None)
                if not woken:
                    raise TimeoutError(f"no acknowledgement for {REPLY_TIMEOUT:g} seconds")
                if not self._closing:
                    await asyncio.sleep(LINGER_SECONDS)  # let a burst of chunks share a frame
        finally:
            receiving.cancel()

    async def _send_frames(self, connection: ClientConnection, items: list[tuple[int, str]]) -> int:
        """Send the items in frames of at most MAX_FRAME_BYTES and MAX_CHUNKS_PER_FRAME
        chunks; the last seq sent."""
        start = 0
        while start < len(items):
            size, end = 0, start
            while (
                end < len(items)
                and end - start < MAX_CHUNKS_PER_FRAME
                and (end == start or size + len(items[end][1]) < MAX_FRAME_BYTES)
            ):
                size += len(items[end][1]) + 1
                end += 1
            frame = (
                f'{{"type":"chunks","seq":{items[start][0]},"chunks":['
                + ",".join(text for _, text in items[start:end])
                + "]}"
            )
            await connection.send(frame)
            start = end
        return items[-1][0]

    async def _receive_acknowledgements(self, connection: ClientConnection) -> None:
        async for message in connection:
            frame = json.loads(message)
            if frame.get("type") == "ack":
                self._acknowledge(int(frame["seq"]))
                # Progress, not merely a connection, resets the backoff: a frame that breaks
                # every connection must still end in an error, not in retries forever.
                self._backoff.succeeded()
                self._changed.set()

    def _sent_after(self, seq: int) -> list[tuple[int, str]]:
        """The queued chunks after ``seq``, found by position: the queue is numbered without
        gaps."""
        if not self._unacknowledged:
            return []
        skip = max(seq + 1 - self._unacknowledged[0][0], 0)
        return list(itertools.islice(self._unacknowledged, skip, None))

    def _acknowledge(self, seq: int) -> None:
        while self._unacknowledged and self._unacknowledged[0][0] <= seq:
            self._unacknowledged.popleft()
        # Progress: the wait for the next ack, if chunks are still out, starts now.
        self._awaiting_ack_since = time.monotonic() if self._unacknowledged else None

    def _ack_due_in(self) -> float | None:
        """Seconds until sent chunks have waited REPLY_TIMEOUT for an ack; None if none wait."""
        if self._awaiting_ack_since is None:
            return None
        return max(self._awaiting_ack_since + REPLY_TIMEOUT - time.monotonic(), 0.0)


async def read_batches(
    config: ClientSettings,
    run_id: str,
    key: str,
    *,
    start_index: int,
    timeout_in_seconds: int,
    access_token: str | None,
    progress: ReadProgress,
    give_up_after: float | None = None,
) -> AsyncIterator[list[Any]]:
    """Yield a run stream's chunks from ``start_index`` until its end, or until no chunk came
    for ``timeout_in_seconds``, in batches: the new chunks of each frame. ``progress`` tracks
    the index of the next chunk and whether the stream ended (rather than the wait timing
    out).

    The timeout is this reader's promise, counted across reconnections: each connection asks
    the server for what is left of it, and the reader ends when it is spent, however often the
    connection was lost meanwhile.
    """
    backoff = _Backoff(give_up_after or GIVE_UP_AFTER, RunstreamError)
    what = f"reading stream {key!r} of run {run_id}"
    progress.next_index = start_index
    deadline = time.monotonic() + timeout_in_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        query = urlencode(
            {"start_index": progress.next_index, "timeout_in_seconds": math.ceil(remaining)}
        )
        try:
            async with _connect(
                config, f"{stream_route(run_id, key)}?{query}", access_token
            ) as connection:
                backoff.succeeded()
                while True:
                    try:
                        # The server ends a quiet read itself; this guards against one that
                        # never says so (a stalled connection).
                        message = await asyncio.wait_for(
                            connection.recv(), deadline - time.monotonic() + TIMEOUT_GRACE
                        )
                    except TimeoutError:
                        return
                    frame = json.loads(message)
                    if frame.get("type") == "end":
                        progress.ended = True
                        return
                    if frame.get("type") != "chunks":
                        continue
                    # A frame may repeat chunks already yielded (a resumed connection).
                    fresh = frame["chunks"][max(0, progress.next_index - frame["index"]) :]
                    if fresh:
                        progress.next_index = frame["index"] + len(frame["chunks"])
                        deadline = time.monotonic() + timeout_in_seconds
                        yield fresh
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as error:
            refusal = _refusal(error)
            if refusal is not None:
                raise refusal from error
            if isinstance(error, ConnectionClosed) and error.rcvd is not None:
                if error.rcvd.code == CLOSE_TIMEOUT:
                    return
                if error.rcvd.code == CLOSE_NORMAL and progress.ended:
                    return
            await backoff.failed(error, what)
