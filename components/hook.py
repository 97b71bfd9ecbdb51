"""``use_realtime_stream``: a ReactPy hook that shows a run's stream as it grows.

    result = use_realtime_stream(run_id, "ai-stream", throttle_in_ms=50)
    result.parts        # the chunks so far (None before the first), a sequence per update
    result.error        # what went wrong, or None
    result.is_complete  # the stream has ended
    result.stop()       # stop reading

Inside the Runstream server the hook reads in-process, from the store and the hub; elsewhere, or
given ``base_url`` (another Runstream server), it reads through the SDK's websocket reader with
``access_token``. Either way it reads through the small interface of :mod:`runstream.reading`.

Chunks arrive in bursts; ``on_data`` is called once per chunk, in order, as each arrives, while
``parts`` is updated at most once per ``throttle_in_ms`` with every chunk that arrived since the
last update. Turning ``enabled`` off and on again resumes where the read stopped, without
repeating a part; a new run id or key starts over with fresh parts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast, overload

from reactpy import use_effect, use_ref, use_state

from runstream import streams
from runstream.identifiers import DEFAULT_KEY
from runstream.reading import LOCAL_SOURCE, ChunkSource, ReadStream
from runstream.streams import StreamDefinition


@dataclass(frozen=True)
class RealtimeStream:
    parts: Parts | None
    error: BaseException | None
    is_complete: bool
    stop: Callable[[], None]


class Parts(Sequence[Any]):
    """The chunks read so far, as one update showed them: a read-only sequence.

    Each update hands on a new ``Parts`` (so a component re-renders) over the one list the hook
    appends to, rather than a copy of it: an update costs the same at the 10,000th chunk as at the
    first. ``list(parts)`` copies it, and it compares equal to any sequence of the same chunks.
    """

    __slots__ = ("_chunks", "_length")

    def __init__(self, chunks: list[Any], length: int) -> None:
        self._chunks = chunks
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._chunks[: self._length][index]
        if not -self._length <= index < self._length:
            raise IndexError("chunk index out of range")
        return self._chunks[index % self._length]

    def __iter__(self) -> Iterator[Any]:
        return islice(self._chunks, self._length)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == self._length and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so unhashable like them

    def __repr__(self) -> str:
        return f"Parts({self[:]!r})"


@dataclass
class StreamProgress:
    """What has been read of one stream, kept across renders and across enabled toggles.

    ``chunks`` only ever grows, and ``shown`` of them have been handed on by an update."""

    identity: tuple[Any, ...]
    next_index: int
    chunks: list[Any] = field(default_factory=list)
    shown: int = 0
    complete: bool = False


# What a reading tells, at most once per throttle window: the progress (``shown`` chunks of it
# to show), and whether the stream ended or what went wrong.
OnUpdate = Callable[[StreamProgress, bool, BaseException | None], None]


def use_realtime_stream(
    run_or_definition: str | StreamDefinition[Any],
    key_or_run_id: str | None = None,
    *,
    access_token: str | None = None,
    base_url: str | None = None,
    on_data: Callable[[Any], None] | None = None,
    timeout_in_seconds: int = 60,
    start_index: int = 0,
    throttle_in_ms: int = 16,
    enabled: bool = True,
) -> RealtimeStream:
    """Read a run's stream live: ``use_realtime_stream(run_id, key)`` or
    ``use_realtime_stream(definition, run_id)``."""
    if isinstance(run_or_definition, StreamDefinition):
        if key_or_run_id is None:
            raise TypeError("use_realtime_stream(definition, run_id) needs the run id")
        run_id, key = key_or_run_id, run_or_definition.id
    else:
        run_id, key = run_or_definition, key_or_run_id or DEFAULT_KEY
    identity = (run_id, key, start_index, base_url)
    # Everything shown is tagged with the stream it belongs to, so that the very first render
    # after a switch to another stream shows nothing of the old one.
    shown, set_shown = use_state(_Shown(identity))

    def show(progress: StreamProgress, complete: bool, error: BaseException | None) -> None:
        parts = Parts(progress.chunks, progress.shown) if progress.shown else None
        set_shown(_Shown(progress.identity, parts, error, complete))

    stop = use_stream_reading(
        run_id,
        key,
        access_token=access_token,
        base_url=base_url,
        on_data=on_data,
        on_update=show,
        timeout_in_seconds=timeout_in_seconds,
        start_index=start_index,
        throttle_in_ms=throttle_in_ms,
        enabled=enabled,
    ).stop
    current = shown if shown.identity == identity else _Shown(identity)
    return RealtimeStream(
        parts=current.parts,
        error=current.error,
        is_complete=current.complete,
        stop=stop,
    )


@dataclass(frozen=True)
class StreamReading:
    """A reading that :func:`use_stream_reading` keeps going: its progress, its source, and how
    to stop it."""

    progress: StreamProgress
    source: ChunkSource | None  # None: the SDK's websocket reader
    stop: Callable[[], None]


def use_stream_reading(
    run_id: str,
    key: str,
    *,
    access_token: str | None,
    base_url: str | None,
    on_data: Callable[[Any], None] | None,
    on_update: OnUpdate,
    timeout_in_seconds: int,
    start_index: int,
    throttle_in_ms: int,
    enabled: bool,
) -> StreamReading:
    """The reading under :func:`use_realtime_stream`, for components that show a stream their own
    way: ``on_update`` is told of new chunks, at most once per ``throttle_in_ms``, and the
    component decides what to render again (the stream view renders only what changed)."""
    identity = (run_id, key, start_index, base_url)
    stopped_for, set_stopped_for = use_state(cast(tuple[Any, ...] | None, None))
    stopped = stopped_for == identity
    progress = use_ref(StreamProgress(identity, start_index))
    if progress.current.identity != identity:
        progress.current = StreamProgress(identity, start_index)
    latest_on_data = use_ref(on_data)
    latest_on_data.current = on_data
    latest_on_update = use_ref(on_update)
    latest_on_update.current = on_update
    local = _local_source() if base_url is None else None

    @use_effect(dependencies=[run_id, key, start_index, base_url, access_token, enabled, stopped])
    async def follow() -> None:
        state = progress.current
        if not enabled or stopped or state.complete:
            return
        throttle = max(throttle_in_ms, 0) / 1000
        last_update = 0.0
        flush_timer: asyncio.TimerHandle | None = None

        def update(*, complete: bool = False, error: BaseException | None = None) -> None:
            nonlocal last_update, flush_timer
            flush_timer = None
            last_update = time.monotonic()
            state.shown = len(state.chunks)
            latest_on_update.current(state, complete, error)

        if state.shown != len(state.chunks):
            update()  # chunks that arrived just before reading was paused
        try:
            chunks: ReadStream[Any]
            if local is not None:
                chunks = await local.read(
                    run_id,
                    key,
                    start_index=state.next_index,
                    timeout_in_seconds=timeout_in_seconds,
                    access_token=access_token,
                )
            else:
                chunks = await streams.read(
                    run_id,
                    key,
                    start_index=state.next_index,
                    timeout_in_seconds=timeout_in_seconds,
                    access_token=access_token,
                    base_url=base_url,
                )
            async for batch in chunks.batches():
                if progress.current is not state:
                    return  # the component now shows another stream; this read is over
                for chunk in batch:
                    state.chunks.append(chunk)
                    state.next_index += 1
                    if latest_on_data.current is not None:
                        latest_on_data.current(chunk)
                wait = last_update + throttle - time.monotonic()
                if wait <= 0:
                    update()
                elif flush_timer is None:
                    flush_timer = asyncio.get_running_loop().call_later(wait, update)
            state.complete = chunks.ended
            failure = None
        except Exception as error:
            failure = error
        finally:
            # Cancelled (unmounted, disabled, another stream): what arrived is kept in progress
            # and shown when reading resumes; nothing is set on a view that may be gone.
            if flush_timer is not None:
                flush_timer.cancel()
        # The read ended (the stream's end, a timeout, an error): one last update, in its turn.
        wait = last_update + throttle - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        update(complete=state.complete, error=failure)

    return StreamReading(progress.current, local, lambda: set_stopped_for(identity))


@dataclass(frozen=True)
class _Shown:
    """What the component shows, and for which stream."""

    identity: tuple[Any, ...]
    parts: Parts | None = None
    error: BaseException | None = None
    complete: bool = False


def _local_source() -> ChunkSource | None:
    """The in-process reader of the Runstream server this view runs in, if any.

    Flask is looked up, not imported: a UI that is no Flask app costs nothing here.
    """
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_app_context():
        return None
    source: ChunkSource | None = flask.current_app.extensions.get(LOCAL_SOURCE)
    return source
