"""ReactPy hooks beyond streams, mirroring Trigger.dev's React hooks in snake_case:
``use_realtime_run`` shows a run as it changes, ``use_task_trigger`` triggers a task.

    live = use_realtime_run(run_id, access_token=token, on_complete=lambda run: ...)
    live.run           # the run (status, output, error, times, streams), None before the first read
    live.error         # what went wrong reading it, or None
    live.stop()        # stop following the run

    trigger = use_task_trigger("summarize", access_token=token)
    trigger.submit(payload)   # from an event handler: triggers a run
    trigger.is_loading        # a submit is on its way
    trigger.handle            # the new run: its id and a public access token that reads it
    trigger.error             # what went wrong with the last submit, or None

Both go through one small interface, :class:`runstream.runs.RunSource`. Inside the Runstream
server (a Flask app context whose app keeps one under :data:`runstream.runs.LOCAL_RUN_SOURCE`)
and without ``base_url``, that is the server's own runs API in-process, which wakes on the hub's
news of runs and checks the credential exactly as its HTTP routes do; anywhere else, the SDK's
HTTP calls to the server at ``base_url`` (or the configured one). Either way a run is followed
by waiting for its next change (``after`` its ``updated_at``), not by polling.

The hooks never act with the process's secret key for a visitor: a trigger without
``access_token`` sends no credential and is refused (401).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

from reactpy import use_effect, use_ref, use_state

from runstream import runs, tasks
from runstream.errors import ApiError
from runstream.runs import LOCAL_RUN_SOURCE, MAX_WAIT_SECONDS, Run, RunSource
from runstream.tasks import TriggeredRun

# After an error that may pass (the server unreachable, or failing), the hook tries again after
# this many seconds, doubling up to the last: a restarted server is followed again by itself.
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class RealtimeRun:
    run: Run | None
    error: BaseException | None
    stop: Callable[[], None]


@dataclass(frozen=True)
class TaskTrigger:
    submit: Callable[[Any], None]
    is_loading: bool
    handle: TriggeredRun | None
    error: BaseException | None


def use_realtime_run(
    run_id: str,
    *,
    access_token: str | None = None,
    base_url: str | None = None,
    on_complete: Callable[[Run], None] | None = None,
    enabled: bool = True,
) -> RealtimeRun:
    """Follow a run live: ``run`` is updated whenever the run changes (its status, output or
    error, its times, its streams as of then), and ``on_complete(run)`` is called once when it
    reaches COMPLETED, FAILED or CANCELED, after which the hook stops reading.

    Turning ``enabled`` off and on again, or a new ``access_token``, resumes from the run last
    shown; a new run id or ``base_url`` starts over (``run`` is None until its first read)."""
    identity = (run_id, base_url)
    shown, set_shown = use_state(_ShownRun(identity))
    stopped_for, set_stopped_for = use_state(cast(tuple[Any, ...] | None, None))
    stopped = stopped_for == identity
    # The run last read, kept across renders and enabled toggles: where the next wait starts.
    known = use_ref(_ShownRun(identity))
    if known.current.identity != identity:
        known.current = _ShownRun(identity)
    latest_on_complete = use_ref(on_complete)
    latest_on_complete.current = on_complete
    source = _source(base_url)

    @use_effect(dependencies=[run_id, base_url, access_token, enabled, stopped])
    async def follow() -> None:
        state = known.current
        if not enabled or stopped or (state.run is not None and state.run.is_final):
            return
        failures = 0
        while True:
            try:
                run = await source.retrieve(
                    run_id,
                    access_token=access_token,
                    after=state.run.updated_at if state.run is not None else None,
                    wait_in_seconds=MAX_WAIT_SECONDS if state.run is not None else 0,
                )
            except Exception as error:
                if known.current is not state:
                    return
                set_shown(_ShownRun(identity, state.run, error))
                if not _may_pass(error):
                    return
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1
                continue
            if known.current is not state:
                return  # the component now shows another run; this read is over
            changed = run != state.run or failures > 0
            failures = 0
            state = known.current = _ShownRun(identity, run)
            if changed:
                set_shown(state)
            if run.is_final:
                if latest_on_complete.current is not None:
                    latest_on_complete.current(run)
                return

    current = shown if shown.identity == identity else _ShownRun(identity)
    return RealtimeRun(run=current.run, error=current.error, stop=lambda: set_stopped_for(identity))


def use_task_trigger(
    task_id: str, *, access_token: str | None = None, base_url: str | None = None
) -> TaskTrigger:
    """Trigger runs of ``task_id``: ``submit(payload)``, called from an event handler, queues
    one with ``access_token`` (a token with ``trigger:tasks:<task_id>``, or the secret key on a
    page only trusted users see). Each submit triggers one run; ``handle`` is the run of the
    last submit that succeeded, ``error`` what went wrong with the last one that finished (None
    after a success), and ``is_loading`` is True while any submit is on its way.

    A new task id or ``base_url`` shows a fresh state; the results of submits made for the
    previous one are not shown with it. Unmounting the component cancels the submits on their
    way."""
    identity = (task_id, base_url)
    shown, set_shown = use_state(_ShownTrigger(identity))
    on_their_way = use_ref(cast(set[asyncio.Task[None]], set()))
    source = _source(base_url)

    @use_effect(dependencies=[])
    def cancel_on_unmount() -> Callable[[], None]:
        def cancel() -> None:
            for submitted in on_their_way.current:
                submitted.cancel()

        return cancel

    def update(change: Callable[[_ShownTrigger], _ShownTrigger], *, adopt: bool = False) -> None:
        """Change the state of this task's trigger; one shown for another task is left as it
        is, unless ``adopt`` (a submit, made from what this render shows) starts this one's."""

        def apply(old: _ShownTrigger) -> _ShownTrigger:
            if old.identity == identity:
                return change(old)
            return change(_ShownTrigger(identity)) if adopt else old

        set_shown(apply)

    async def trigger(payload: Any) -> None:
        handle: TriggeredRun | None = None
        failure: BaseException | None = None
        try:
            handle = await source.trigger(task_id, payload, access_token=access_token)
        except Exception as error:
            failure = error
        update(
            lambda old: replace(
                old,
                loading=old.loading - 1,
                handle=old.handle if handle is None else handle,
                error=failure,
            )
        )

    def submit(payload: Any) -> None:
        submitted = asyncio.get_running_loop().create_task(trigger(payload))
        on_their_way.current.add(submitted)
        submitted.add_done_callback(on_their_way.current.discard)
        update(lambda old: replace(old, loading=old.loading + 1), adopt=True)

    current = shown if shown.identity == identity else _ShownTrigger(identity)
    return TaskTrigger(
        submit=submit,
        is_loading=current.loading > 0,
        handle=current.handle,
        error=current.error,
    )


@dataclass(frozen=True)
class _ShownRun:
    """What a run hook shows, and for which run."""

    identity: tuple[Any, ...]
    run: Run | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class _ShownTrigger:
    """What a trigger hook shows, and for which task: ``loading`` submits on their way."""

    identity: tuple[Any, ...]
    loading: int = 0
    handle: TriggeredRun | None = None
    error: BaseException | None = None


class _HttpRuns:
    """The runs API over HTTP, through the SDK: the source of a hook outside the server."""

    def __init__(self, base_url: str | None) -> None:
        self._base_url = base_url

    async def retrieve(
        self, run_id: str, *, access_token: str | None, after: str | None, wait_in_seconds: int
    ) -> Run:
        return await runs.retrieve(
            run_id,
            access_token=access_token,
            base_url=self._base_url,
            after=after,
            wait_in_seconds=wait_in_seconds,
        )

    async def trigger(
        self, task_id: str, payload: Any, *, access_token: str | None
    ) -> TriggeredRun:
        # An empty token is no credential at all: never the process's secret key for a visitor.
        return await tasks.trigger(
            task_id, payload, access_token=access_token or "", base_url=self._base_url
        )


def _source(base_url: str | None) -> RunSource:
    """The in-process runs of the Runstream server this view runs in, unless ``base_url``
    names a server or there is none; then the runs API over HTTP.

    Flask is looked up, not imported: a UI that is no Flask app costs nothing here.
    """
    flask = sys.modules.get("flask")
    if base_url is None and flask is not None and flask.has_app_context():
        local: RunSource | None = flask.current_app.extensions.get(LOCAL_RUN_SOURCE)
        if local is not None:
            return local
    return _HttpRuns(base_url)


def _may_pass(error: Exception) -> bool:
    """Whether trying again may succeed: not after a refusal (4xx), which says what to fix."""
    return not (isinstance(error, ApiError) and 400 <= error.status < 500)
