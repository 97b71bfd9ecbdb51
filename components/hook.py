"""``use_realtime_stream``: a ReactPy hook that shows a run's stream as it grows.

    result = use_realtime_stream(run_id, "ai-stream", throttle_in_ms=50)
    result.parts        # the chunks so far (None before the first), a new list on each update
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from reactpy import use_effect, use_ref, use_state

from runstream import streams
from runstream.identifiers import DEFAULT_KEY
from runstream.reading import LOCAL_SOURCE, ChunkSource, ReadStream
from runstream.streams import StreamDefinition


@dataclass(frozen=True)
class RealtimeStream:
    parts: list[Any] | None
    error: BaseException | None
    is_complete: bool
    stop: Callable[[], None]


@dataclass
class _Progress:
    """What has been read of one stream, kept across renders and across enabled toggles."""

    identity: tuple[Any, ...]
    next_index: int
    parts: list[Any] = field(default_factory=list)
    shown: int = 0  # how many of ``parts`` the last state update carried
    complete: bool = False


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
    stopped_for, set_stopped_for = use_state(cast(tuple[Any, ...] | None, None))
    stopped = stopped_for == identity
    progress = use_ref(_Progress(identity, start_index))
    if progress.current.identity != identity:
        progress.current = _Progress(identity, start_index)
    latest_on_data = use_ref(on_data)
    latest_on_data.current = on_data
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
            state.shown = len(state.parts)
            set_shown(_Shown(identity, list(state.parts) or None, error, complete))

        if state.shown != len(state.parts):
            update()  # chunks that arrived just before reading was paused
        try:
            chunks: ReadStream[Any]
            if local is not None:
                chunks = await local.read(
                    run_id,
                    key,
                    start_index=state.next_index,
                    timeout_in_seconds=timeout_in_seconds,
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
                    state.parts.append(chunk)
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

    current = shown if shown.identity == identity else _Shown(identity)
    return RealtimeStream(
        parts=current.parts,
        error=current.error,
        is_complete=current.complete,
        stop=lambda: set_stopped_for(identity),
    )


@dataclass(frozen=True)
class _Shown:
    """What the component shows, and for which stream."""

    identity: tuple[Any, ...]
    parts: list[Any] | None = None
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
