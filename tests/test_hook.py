"""``use_realtime_stream`` inside the Runstream server, without a browser.

Each test builds an app on an SQLite file, pushes its app context, and renders test components
through ``reactpy.core.layout.Layout`` in ``asyncio.run``. Chunks are written from other
threads through ``RunStreams``, as a worker's websocket writes would be; runs are ended with
``Runs.claim`` and ``Runs.complete``. Each component records every render's ``parts``,
``is_complete`` and ``error`` so that the tests check what a user would have seen.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from layout_support import View, app, run, runtime, until
from reactpy import component, html, use_state
from reactpy.core.types import ComponentType, VdomDict

from runstream import StreamDefinition, streams
from runstream.components import RealtimeStream, use_realtime_stream
from runstream.server import Runtime
from runstream.server.core.errors import NotFound, NotPermitted

__all__ = ["app", "runtime"]  # the shared fixtures, used by name below

TASK = "hook-test"
WORKER = "hook-test-worker"
# How long the tests give a stopped reader to (wrongly) show a chunk that a live one has shown.
SETTLE = 0.2

Target = tuple[str, str | None]


# -- the app and its streams -------------------------------------------------------------------


def new_run(runtime: Runtime) -> str:
    """A run that a worker has claimed: EXECUTING, so its streams stay open until it ends."""
    run_id = runtime.runs.trigger(TASK, None).id
    claimed = runtime.runs.claim(WORKER, [TASK])
    assert [run.id for run in claimed] == [run_id]
    return run_id


class Writer:
    """One writer of one run stream, numbering its chunks from 0. Its methods block: call them
    from another thread (``await off_loop(writer.write, ...)``)."""

    def __init__(self, runtime: Runtime, run_id: str, key: str = "default") -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.key = key
        self.writer_id = f"writer-{key}"
        session = runtime.run_streams.open_writer(run_id, key, self.writer_id)
        self.epoch = session.epoch
        self.next_seq = session.last_seq + 1

    def write(self, *chunks: Any) -> None:
        """Append each chunk in its own write, as a worker streaming tokens does."""
        for chunk in chunks:
            self.runtime.run_streams.write(
                self.run_id, self.key, self.writer_id, self.epoch, self.next_seq, [chunk]
            )
            self.next_seq += 1

    def finish(self) -> None:
        """The run completes and the writer ends: the stream ends after its last chunk."""
        self.runtime.runs.complete(self.run_id, WORKER, {"done": True})
        self.runtime.run_streams.close_writer(self.run_id, self.key, self.writer_id)


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call in another thread, keeping the event loop (and the view) live."""
    return await asyncio.to_thread(function, *args)


# -- a view that records what it shows ---------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One render of a viewer: what the hook returned then, and for which stream."""

    at: float  # time.monotonic() when the component rendered
    target: Target
    enabled: bool
    parts: list[Any] | None
    is_complete: bool
    error: BaseException | None


@dataclass
class Probe:
    """What a test sees of one viewer: its renders, on_data calls, and its state setters."""

    seen: list[Seen] = field(default_factory=list)
    data: list[Any] = field(default_factory=list)
    result: RealtimeStream | None = None
    set_target: Callable[[Target], None] | None = None
    set_enabled: Callable[[bool], None] | None = None

    @property
    def last(self) -> Seen:
        assert self.seen, "the viewer never rendered"
        return self.seen[-1]

    @property
    def parts(self) -> list[Any] | None:
        return self.last.parts

    def part_updates(self) -> list[Seen]:
        """The renders that brought a new ``parts`` list (the hook makes one per update)."""
        updates: list[Seen] = []
        previous: list[Any] | None = None
        for seen in self.seen:
            if seen.parts is not None and seen.parts is not previous:
                updates.append(seen)
            previous = seen.parts
        return updates

    def stop(self) -> None:
        assert self.result is not None
        self.result.stop()


@component
def Viewer(
    probe: Probe,
    run_id: str,
    stream_key: str | None = None,
    definition: StreamDefinition[Any] | None = None,
    enabled: bool = True,
    **options: Any,
) -> VdomDict:
    """Shows one stream through the hook and records each render in ``probe``."""
    target, set_target = use_state((run_id, stream_key))
    is_enabled, set_enabled = use_state(enabled)
    if definition is not None:
        result = use_realtime_stream(
            definition, target[0], enabled=is_enabled, on_data=probe.data.append, **options
        )
    else:
        result = use_realtime_stream(
            target[0], target[1], enabled=is_enabled, on_data=probe.data.append, **options
        )
    probe.result, probe.set_target, probe.set_enabled = result, set_target, set_enabled
    probe.seen.append(
        Seen(
            at=time.monotonic(),
            target=target,
            enabled=is_enabled,
            parts=result.parts,
            is_complete=result.is_complete,
            error=result.error,
        )
    )
    return html.p(repr(result.parts))


@component
def Row(*viewers: ComponentType) -> VdomDict:
    return html.div(*viewers)


def view(*viewers: ComponentType) -> View:
    return View(viewers[0] if len(viewers) == 1 else Row(*viewers))


def is_prefix(parts: list[Any] | None, chunks: list[Any]) -> bool:
    return parts is None or parts == chunks[: len(parts)]


# -- the tests ---------------------------------------------------------------------------------


def test_shows_backlog_then_live_chunks_in_order_and_completes(runtime: Runtime) -> None:
    """Chunks written before and during the view show exactly once, in order; the stream
    shows complete after the run completes and its writer ends, and the read then lets go."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    writer.write(*range(5))
    chunks = list(range(12))
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id)):
            await until(lambda: probe.parts == chunks[:5], "the backlog shows")
            await off_loop(writer.write, *chunks[5:9])
            await until(lambda: probe.parts == chunks[:9], "live chunks show")
            await off_loop(writer.write, *chunks[9:])
            await off_loop(writer.finish)
            await until(lambda: probe.last.is_complete, "the stream shows complete")
            assert probe.parts == chunks
            assert probe.last.error is None
            assert runtime.hub.listener_count() == 0

    run(scenario)
    assert all(is_prefix(seen.parts, chunks) for seen in probe.seen)
    first_complete = next(i for i, seen in enumerate(probe.seen) if seen.is_complete)
    assert all(seen.parts == chunks for seen in probe.seen[first_complete:])


def test_parts_is_none_until_the_first_chunk(runtime: Runtime) -> None:
    """Before the stream's first chunk, parts is None (not an empty list); then it grows."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, "tokens")):
            await until(lambda: runtime.hub.listener_count() == 1, "the hook waits for data")
            await asyncio.sleep(SETTLE)
            assert {repr(seen.parts) for seen in probe.seen} == {"None"}
            assert not probe.last.is_complete and probe.last.error is None
            tokens = Writer(runtime, run_id, "tokens")
            await off_loop(tokens.write, "a")
            await until(lambda: probe.parts == ["a"], "the first chunk shows")
            await off_loop(tokens.write, "b", "c")
            await until(lambda: probe.parts == ["a", "b", "c"], "later chunks show")
            await off_loop(writer.write, "not-tokens")  # another key of the same run
            await off_loop(tokens.finish)
            await until(lambda: probe.last.is_complete, "the stream shows complete")
            assert probe.parts == ["a", "b", "c"]

    run(scenario)


def test_throttle_batches_a_burst_into_few_spaced_updates(runtime: Runtime) -> None:
    """A burst of chunks becomes few updates, each at least throttle_in_ms after the last,
    together carrying every chunk once, in order."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    throttle = 0.2
    burst = list(range(200))
    probe = Probe()
    timing: dict[str, float] = {}

    def write_burst() -> None:
        """200 chunks in about a second: a token stream, spanning several windows."""
        timing["start"] = time.monotonic()
        for chunk in burst:
            writer.write(chunk)
            time.sleep(0.005)
        timing["end"] = time.monotonic()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, throttle_in_ms=int(throttle * 1000))):
            await until(lambda: runtime.hub.listener_count() == 1, "the hook waits for data")
            await off_loop(write_burst)
            await until(lambda: probe.parts == burst, "the whole burst shows")
            await off_loop(writer.finish)
            await until(lambda: probe.last.is_complete, "the stream shows complete")

    run(scenario)
    updates = probe.part_updates()
    duration = timing["end"] - timing["start"]
    # Updates can happen from the first chunk until one window after the last: at most one
    # per window, plus the immediate first one and the trailing one.
    bound = int(duration / throttle) + 3
    assert len(updates) <= bound, (len(updates), duration)
    assert len(updates) < len(burst) // 4
    assert probe.parts == burst
    assert all(is_prefix(update.parts, burst) for update in updates)
    gaps = [later.at - earlier.at for earlier, later in pairwise(updates)]
    assert all(gap >= throttle - 0.01 for gap in gaps), gaps


def test_throttle_holds_for_the_last_update_when_the_stream_ends(runtime: Runtime) -> None:
    """The update carrying a stream's last chunks also waits for the throttle window."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    throttle = 0.5
    probe = Probe()

    def write_last_and_end() -> None:
        writer.write(1)
        writer.finish()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, throttle_in_ms=int(throttle * 1000))):
            await off_loop(writer.write, 0)
            await until(lambda: probe.parts == [0], "the first chunk shows")
            await off_loop(write_last_and_end)
            await until(lambda: probe.last.is_complete, "the stream shows complete")

    run(scenario)
    updates = probe.part_updates()
    assert [update.parts for update in updates] == [[0], [0, 1]]
    assert updates[1].at - updates[0].at >= throttle - 0.01


def test_on_data_sees_every_chunk_once_in_order_unthrottled(runtime: Runtime) -> None:
    """on_data is called once per chunk, backlog included, in order, even while parts waits
    for its throttle window."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    writer.write(*range(5))
    chunks = list(range(10))
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, throttle_in_ms=60_000)):
            await until(lambda: probe.parts == chunks[:5], "the backlog shows")
            assert probe.data == chunks[:5]
            for chunk in chunks[5:]:
                await off_loop(writer.write, chunk)
            await until(lambda: probe.data == chunks, "on_data sees every live chunk")
            # parts is held until the window of 60 s ends; on_data was not.
            assert probe.parts == chunks[:5]
            await asyncio.sleep(SETTLE)
            assert probe.data == chunks

    run(scenario)
    assert probe.data == chunks


def test_start_index_begins_at_that_chunk(runtime: Runtime) -> None:
    """start_index=N shows (and hands on_data) chunk N onwards, then the live ones."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    writer.write(*[f"c{i}" for i in range(10)])
    chunks = [f"c{i}" for i in range(12)]
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, start_index=4)):
            await until(lambda: probe.parts == chunks[4:10], "chunks from index 4 show")
            await off_loop(writer.write, *chunks[10:])
            await until(lambda: probe.parts == chunks[4:], "live chunks show")

    run(scenario)
    assert probe.data == chunks[4:]
    assert all(is_prefix(seen.parts, chunks[4:]) for seen in probe.seen)


def test_timeout_without_data_stops_without_error(runtime: Runtime) -> None:
    """timeout_in_seconds=1 and no data: the read stops and lets go of its subscription,
    with no error and not complete; a later chunk does not show."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    timed, control = Probe(), Probe()

    async def scenario() -> None:
        viewers = Viewer(timed, run_id, timeout_in_seconds=1), Viewer(control, run_id)
        async with view(*viewers):
            await until(lambda: runtime.hub.listener_count() == 2, "both readers wait")
            await until(lambda: runtime.hub.listener_count() == 1, "the timed reader stops")
            await off_loop(writer.write, "late")
            await until(lambda: control.parts == ["late"], "the live reader shows the chunk")
            await asyncio.sleep(SETTLE)
        assert runtime.hub.listener_count() == 0

    run(scenario)
    assert timed.last.parts is None
    assert timed.last.error is None
    assert timed.last.is_complete is False


def test_stop_ends_the_read(runtime: Runtime) -> None:
    """After stop(), no new chunk shows, the subscription is gone, and there is no error."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    stopped, control = Probe(), Probe()

    async def scenario() -> None:
        async with view(Viewer(stopped, run_id), Viewer(control, run_id)):
            await off_loop(writer.write, 0, 1, 2)
            await until(lambda: stopped.parts == [0, 1, 2], "the chunks show")
            stopped.stop()
            await until(lambda: runtime.hub.listener_count() == 1, "the stopped reader lets go")
            await off_loop(writer.write, 3, 4, 5)
            await until(lambda: control.parts == list(range(6)), "the live reader shows more")
            await asyncio.sleep(SETTLE)
            assert stopped.parts == [0, 1, 2]
            assert stopped.data == [0, 1, 2]
            assert stopped.last.error is None and not stopped.last.is_complete
        assert runtime.hub.listener_count() == 0

    run(scenario)


def test_toggling_enabled_resumes_without_repeating(runtime: Runtime) -> None:
    """enabled off keeps what was shown and reads nothing; on again, the read resumes where
    it stopped: every chunk shows exactly once, in order."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    chunks = [f"t{i}" for i in range(14)]
    probe, control = Probe(), Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id), Viewer(control, run_id)):
            await off_loop(writer.write, *chunks[:5])
            await until(lambda: probe.parts == chunks[:5], "the first chunks show")
            assert probe.set_enabled is not None
            probe.set_enabled(False)
            await until(lambda: runtime.hub.listener_count() == 1, "the disabled reader stops")
            await off_loop(writer.write, *chunks[5:10])
            await until(lambda: control.parts == chunks[:10], "the live reader shows more")
            await asyncio.sleep(SETTLE)
            assert probe.parts == chunks[:5]
            probe.set_enabled(True)
            await until(lambda: probe.parts == chunks[:10], "the missed chunks show")
            probe.set_enabled(False)
            await until(lambda: not probe.last.enabled, "the viewer renders disabled")
            probe.set_enabled(True)
            await off_loop(writer.write, *chunks[10:])
            await off_loop(writer.finish)
            await until(lambda: probe.last.is_complete, "the stream shows complete")
            assert probe.parts == chunks

    run(scenario)
    assert all(is_prefix(seen.parts, chunks) for seen in probe.seen)
    assert probe.data == chunks


@pytest.mark.parametrize("switch", ["key", "run id"])
def test_switching_stream_starts_fresh(runtime: Runtime, switch: str) -> None:
    """A new key or run id shows only the new stream's chunks: parts is None until its first
    chunk, and never shows the old stream's chunks again."""
    old_run = new_run(runtime)
    old = Writer(runtime, old_run, "old")
    old.write("o0", "o1", "o2")
    new_target: Target = (old_run, "new") if switch == "key" else (new_run(runtime), "old")
    new = Writer(runtime, new_target[0], new_target[1] or "default")
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, old_run, "old")):
            await until(lambda: probe.parts == ["o0", "o1", "o2"], "the old stream shows")
            assert probe.set_target is not None
            probe.set_target(new_target)
            await until(lambda: probe.last.target == new_target, "the new target renders")
            await until(lambda: runtime.hub.listener_count() == 1, "the new read waits")
            await off_loop(old.write, "o3")
            await off_loop(new.write, "n0")
            await until(lambda: probe.parts == ["n0"], "the new stream's chunk shows")
            await off_loop(new.write, "n1")
            await until(lambda: probe.parts == ["n0", "n1"], "the new stream grows")

    run(scenario)
    after = [seen for seen in probe.seen if seen.target == new_target]
    assert all(is_prefix(seen.parts, ["n0", "n1"]) for seen in after), [
        seen.parts for seen in after
    ]
    assert after[0].parts is None
    assert probe.data == ["o0", "o1", "o2", "n0", "n1"]


def test_switching_stream_after_stop_reads_the_new_one(runtime: Runtime) -> None:
    """stop() stops the current read; switching to another run afterwards reads that run."""
    old_run, other_run = new_run(runtime), new_run(runtime)
    Writer(runtime, old_run).write("o0")
    Writer(runtime, other_run).write("n0")
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, old_run)):
            await until(lambda: probe.parts == ["o0"], "the old stream shows")
            probe.stop()
            await until(lambda: runtime.hub.listener_count() == 0, "the read stops")
            assert probe.set_target is not None
            probe.set_target((other_run, None))
            await until(lambda: probe.last.target == (other_run, None), "the new run renders")
            # A short wait (a local read takes milliseconds) keeps this known failure cheap.
            await until(lambda: probe.parts == ["n0"], "the new run's stream shows", timeout=2)

    run(scenario)


def test_stream_definition_reads_its_key(runtime: Runtime) -> None:
    """use_realtime_stream(definition, run_id) reads the stream keyed by the definition's id."""
    ai_stream = streams.define(id="ai-stream", type=str)
    run_id = new_run(runtime)
    Writer(runtime, run_id).write("default-chunk")
    writer = Writer(runtime, run_id, "ai-stream")
    writer.write("Hello")
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, definition=ai_stream)):
            await until(lambda: probe.parts == ["Hello"], "the definition's stream shows")
            await off_loop(writer.write, " world")
            await off_loop(writer.finish)
            await until(lambda: probe.last.is_complete, "the stream shows complete")
            assert probe.parts == ["Hello", " world"]

    run(scenario)


def test_closing_the_view_leaves_nothing_running(runtime: Runtime) -> None:
    """Closing a view (live readers, one with an update pending, one disabled, one done)
    leaves no hub subscription, no asyncio task and no thread behind."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    done_run = new_run(runtime)
    done_writer = Writer(runtime, done_run)
    done_writer.write("x")
    done_writer.finish()
    live, pending, disabled, done = Probe(), Probe(), Probe(), Probe()
    threads_before = set(threading.enumerate())
    leftovers: dict[str, Any] = {}

    async def scenario() -> None:
        async with view(
            Viewer(live, run_id),
            Viewer(pending, run_id, throttle_in_ms=60_000),
            Viewer(disabled, run_id, enabled=False),
            Viewer(done, done_run),
        ):
            await off_loop(writer.write, 0)
            await until(lambda: pending.parts == [0], "the first chunk shows")
            await off_loop(writer.write, 1)
            await until(lambda: live.parts == [0, 1], "more chunks show")
            await until(lambda: pending.data == [0, 1], "an update waits for its window")
            await until(lambda: done.last.is_complete, "the ended stream shows complete")
            assert runtime.hub.listener_count() == 2
        await asyncio.sleep(SETTLE)
        leftovers["listeners"] = runtime.hub.listener_count()
        leftovers["tasks"] = asyncio.all_tasks() - {asyncio.current_task()}

    run(scenario)
    # asyncio.run has shut the loop's default executor (asyncio.to_thread) down.
    assert leftovers["listeners"] == 0
    assert leftovers["tasks"] == set()
    new_threads = [thread for thread in threading.enumerate() if thread not in threads_before]
    assert [thread.name for thread in new_threads] == []
    assert pending.parts == [0]
    assert disabled.parts is None


def test_closing_the_view_mid_window_logs_no_error(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a view while chunks wait for the throttle window is quiet: nothing is logged
    as an error."""
    run_id = new_run(runtime)
    writer = Writer(runtime, run_id)
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, run_id, throttle_in_ms=60_000)):
            await off_loop(writer.write, 0)
            await until(lambda: probe.parts == [0], "the first chunk shows")
            await off_loop(writer.write, 1)
            await until(lambda: probe.data == [0, 1], "the second chunk arrives")
            await asyncio.sleep(SETTLE)  # the read now waits on its subscription
        await asyncio.sleep(SETTLE)

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert probe.parts == [0]
    assert [
        record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR
    ] == []


def test_a_run_that_does_not_exist_sets_error(runtime: Runtime) -> None:
    """Reading a run id that does not exist shows a NotFound error and holds nothing open."""
    probe = Probe()

    async def scenario() -> None:
        async with view(Viewer(probe, "run_doesnotexist")):
            await until(lambda: probe.last.error is not None, "the error shows")
            await asyncio.sleep(SETTLE)
            assert runtime.hub.listener_count() == 0

    run(scenario)
    assert isinstance(probe.last.error, NotFound)
    assert probe.last.parts is None
    assert probe.last.is_complete is False


def test_an_access_token_in_process_reads_only_the_runs_it_may(runtime: Runtime) -> None:
    """Inside the server the hook reads in-process; a token it is given is still checked: one
    that may read another run is refused, one that may read this run reads it."""
    run_id, other_id = new_run(runtime), runtime.runs.trigger(TASK, None).id
    Writer(runtime, run_id).write("visible")
    hour = timedelta(hours=1)
    refused, allowed = Probe(), Probe()
    wrong_token = runtime.auth.create_public_token([f"read:runs:{other_id}"], hour)
    right_token = runtime.auth.create_public_token([f"read:runs:{run_id}"], hour)

    async def scenario() -> None:
        async with view(
            Viewer(refused, run_id, access_token=wrong_token),
            Viewer(allowed, run_id, access_token=right_token),
        ):
            await until(lambda: refused.last.error is not None, "the wrong token is refused")
            await until(lambda: allowed.parts == ["visible"], "the right token reads")

    run(scenario)
    assert isinstance(refused.last.error, NotPermitted)
    assert refused.last.parts is None
    assert allowed.last.error is None
