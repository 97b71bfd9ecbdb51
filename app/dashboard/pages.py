"""The dashboard's pages, as ReactPy components that read the store in-process.

Every open page is a task on the server's one event loop, and ReactPy sends a component's whole
model on each render: so a page renders when what it shows changed, and only then. It loads on
the hub's news (the ``runs`` topic: a run was triggered, claimed or ended), and re-checks now
and then for what has no news (a run's new streams, a stream that expired); what changes by
the second (durations, "3 min ago") is the browser's to tick (``static/runstream.js`` reads
the ``data-started-at`` / ``datetime`` attributes rendered here, in UTC, and the page's
``data-server-now``, so that a browser whose clock is off still counts right).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import quote

from flask import current_app
from reactpy import component, html, use_connection, use_effect, use_location, use_memo, use_state
from reactpy.core.types import ComponentType, VdomDict

from runstream.components import StreamView

from ..core.clock import format_timestamp, utcnow
from ..core.follower import AsyncTopicWatch
from ..runs.runs import RUNS_TOPIC, RunRecord, RunStatus, RunSummary
from ..runtime import Runtime, runtime
from .guards import signed_in

# How often a page loads again without news: a run's page while the run has not ended, for the
# streams it creates (the hub has no news of a new stream of a run); any other page only as a
# safety net.
NEW_STREAMS_SECONDS = 2.0
RECHECK_SECONDS = 30.0
# The runs list shows this many of the newest runs.
LISTED_RUNS = 50
# A queued run that no worker claimed for this long gets a hint on how to start one.
UNCLAIMED_HINT_AFTER = timedelta(seconds=10)
T = TypeVar("T")


@component
def Dashboard() -> VdomDict:
    location = use_location()
    parts = location.pathname.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "runs":
        return Shell(RunPage(parts[1], key=parts[1]))
    return Shell(RunsPage())


def Shell(content: VdomDict | ComponentType) -> VdomDict:
    return html.div(
        {"class_name": "shell"},
        html.header(
            {"class_name": "top"},
            html.nav(
                {"aria-label": "Runstream"},
                html.a({"href": "/runs", "class_name": "brand"}, "Runstream"),
                html.a({"href": "/runs", "class_name": "section"}, "Runs"),
                "" if runtime().auth.disabled else SignOut(),
            ),
        ),
        html.main(content),
    )


def SignOut() -> VdomDict:
    """The "Sign out" button: a plain form that POSTs to /logout, the browser's own submit
    (with its Origin header, which the sign-out checks), not an event of the page's view."""
    return html.form(
        {"method": "post", "action": "/logout", "class_name": "sign-out"},
        html.button({"type": "submit"}, "Sign out"),
    )


def use_live(
    load: Callable[[Runtime], T], dependencies: list[Any], *, recheck: Callable[[T], float]
) -> T | None:
    """``load(runtime)``, run in a thread, again on every news of a run, and ``recheck(loaded)``
    seconds after the last load without news.

    The page renders again only when what it loaded changed: all the open pages of a server
    render on its one event loop, and an idle page costs it no render and no update sent."""
    value, set_value = use_state(cast(T | None, None))
    app_runtime = runtime()

    @use_effect(dependencies=dependencies)
    async def refresh() -> None:
        shown: T | None = None
        async with AsyncTopicWatch(app_runtime.hub, RUNS_TOPIC) as news:
            while True:
                loaded = await asyncio.to_thread(load, app_runtime)
                if shown is None or loaded != shown:
                    set_value(loaded)
                shown = loaded
                await news.wait(recheck(loaded))

    return value


def use_may_act() -> bool:
    """The page's browser is signed in with the secret key (or authentication is disabled):
    it may cancel and trigger runs. Read once per page, from its websocket's handshake."""
    scope = use_connection().scope
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def check() -> bool:
        with app.request_context(scope):
            return signed_in()

    return use_memo(check, [])


# -- the runs list -------------------------------------------------------------------------------


@component
def RunsPage() -> VdomDict:
    status, set_status = use_state("")
    task_filter, set_task_filter = use_state("")

    def load(app_runtime: Runtime) -> list[RunSummary]:
        return app_runtime.runs.summaries(
            status=status or None, task_contains=task_filter.strip(), limit=LISTED_RUNS
        )

    rows = use_live(load, [status, task_filter], recheck=lambda _rows: RECHECK_SECONDS)
    return html.section(
        {"class_name": "runs", "data-server-now": format_timestamp(utcnow())},
        html.header(
            {"class_name": "page-header"},
            html.h1("Runs"),
            # `runstream serve --demo` runs the demo worker in the server: offer another run.
            DemoButton() if current_app.config.get("DEMO") else "",
            html.div(
                {"class_name": "filters", "role": "search"},
                html.select(
                    {
                        "aria-label": "Status",
                        "value": status,
                        "on_change": lambda event: set_status(event["target"]["value"]),
                    },
                    html.option({"value": ""}, "All statuses"),
                    [html.option({"value": s.value, "key": s.value}, s.value) for s in RunStatus],
                ),
                html.input(
                    {
                        "type": "search",
                        "aria-label": "Task id contains",
                        "placeholder": "Task id contains…",
                        "value": task_filter,
                        "on_change": lambda event: set_task_filter(event["target"]["value"]),
                    }
                ),
            ),
        ),
        RunTable(rows) if rows else "",
        html.p({"class_name": "empty"}, _no_runs(rows, status, task_filter)) if not rows else "",
    )


def _no_runs(rows: list[RunSummary] | None, status: str, task_filter: str) -> str:
    if rows is None:
        return "Loading…"
    if status or task_filter.strip():
        return "No runs match these filters."
    return "No runs yet."


COLUMNS = ("Run", "Task", "Status", "Created", "Duration", "Streams")


def RunTable(rows: list[RunSummary]) -> VdomDict:
    return html.table(
        {"class_name": "run-table"},
        html.thead(html.tr([html.th({"key": name, "scope": "col"}, name) for name in COLUMNS])),
        html.tbody(
            [
                html.tr(
                    {"key": run.id, "class_name": "run-row", "data-run-id": run.id},
                    html.td(
                        {"data-label": "Run", "class_name": "run-id"},
                        html.a({"href": f"/runs/{run.id}"}, run.id),
                    ),
                    html.td({"data-label": "Task", "class_name": "task"}, run.task_id),
                    html.td({"data-label": "Status"}, StatusBadge(run.status)),
                    html.td({"data-label": "Created"}, Time(run.created_at)),
                    html.td({"data-label": "Duration"}, Duration(run.started_at, run.finished_at)),
                    html.td(
                        {"data-label": "Streams", "class_name": "count"}, str(run.stream_count)
                    ),
                )
                for run in rows
            ]
        ),
    )


@component
def DemoButton() -> VdomDict:
    """The button "Run the demo again": it triggers a demo run in-process, then links to it."""
    started, set_started = use_state(cast(str | None, None))
    app_runtime = runtime()

    async def run_again(_event: Any) -> None:
        from .. import demo

        set_started(await asyncio.to_thread(demo.trigger_again, app_runtime))

    return html.div(
        {"class_name": "demo"},
        html.button(
            {"type": "button", "class_name": "demo-again", "on_click": run_again},
            "Run the demo again",
        ),
        html.a({"href": f"/runs/{started}", "class_name": "demo-run"}, f"Watch {started}")
        if started
        else "",
    )


def StatusBadge(status: RunStatus) -> VdomDict:
    return html.span({"class_name": f"badge {status.value.lower()}"}, status.value)


# -- times ---------------------------------------------------------------------------------------


def Time(moment: datetime, *, relative: bool = True) -> VdomDict:
    """A moment, in UTC with its zone (what a page without its script shows); the browser's
    script shows it in the reader's time zone, and how long ago it was unless ``relative`` is
    False (the full date and zone are then in the title)."""
    utc = _utc_text(moment)
    return html.time(
        {
            "datetime": format_timestamp(moment),
            "title": utc,
            "data-utc": utc,
            "data-format": "relative" if relative else "absolute",
        },
        utc,
    )


def _utc_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def Duration(start: datetime | None, end: datetime | None) -> VdomDict | str:
    """How long from ``start`` to ``end``; while ``end`` is None the browser's script counts
    on from ``start``. "—" without a ``start``."""
    if start is None:
        return "—"
    attributes = {"class_name": "duration", "data-started-at": format_timestamp(start)}
    if end is not None:
        attributes["data-finished-at"] = format_timestamp(end)
    return html.span(attributes, _duration((end or utcnow()) - start))


def _duration(elapsed: timedelta) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``: as the browser's script writes it."""
    milliseconds = max(0, int(elapsed.total_seconds() * 1000))
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, second = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {second:02d} s"
    hours, minute = divmod(minutes, 60)
    return f"{hours} h {minute:02d} min"


# -- one run -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunShown:
    """What a run's page shows: the run without what changes unseen every few seconds while it
    executes (its heartbeat), its streams' keys (what their tails hold is the stream views'
    news) and its children's ids."""

    run: RunRecord
    keys: list[str]
    child_ids: list[str]


def load_run(app_runtime: Runtime, run_id: str) -> RunShown | str:
    """The run's page as loaded now; a bad or unknown run id is what to say instead."""
    try:
        run = app_runtime.runs.get(run_id)
    except Exception as error:  # a bad or unknown run id: say so on the page
        return str(error)
    keys = [stream.path.rsplit("/", 1)[1] for stream in app_runtime.run_streams.streams(run_id)]
    steady = dataclasses.replace(run, heartbeat_at=None, updated_at=run.created_at)
    return RunShown(steady, keys, app_runtime.runs.child_ids(run_id))


@component
def RunPage(run_id: str) -> VdomDict:
    selected, set_selected = use_state(cast(str | None, None))
    loaded = use_live(
        lambda app_runtime: load_run(app_runtime, run_id),
        [run_id],
        recheck=lambda loaded: (
            NEW_STREAMS_SECONDS
            if isinstance(loaded, RunShown) and not loaded.run.status.is_final
            else RECHECK_SECONDS
        ),
    )
    if loaded is None:
        return html.p("Loading…")
    if isinstance(loaded, str):
        return html.p({"class_name": "error"}, loaded)
    run, keys = loaded.run, loaded.keys
    current = selected if selected in keys else (keys[0] if keys else None)
    return html.article(
        {
            "class_name": "run",
            "data-status": run.status.value,
            "data-server-now": format_timestamp(utcnow()),
        },
        html.header(
            {"class_name": "page-header"},
            html.h1({"class_name": "run-id"}, run.id),
            StatusBadge(run.status),
            html.span({"class_name": "task"}, run.task_id),
            html.span({"class_name": "duration-box"}, Duration(run.started_at, run.finished_at)),
            RunActions(run, key=f"{run.id}-actions"),
        ),
        UnclaimedHint(run, key=f"{run.id}-hint") if run.status is RunStatus.QUEUED else "",
        Timeline(run),
        html.dl(
            {"class_name": "family"},
            _link_row("Parent", run.parent_run_id),
            _link_row("Root", run.root_run_id if run.root_run_id != run.id else None),
            html.dt("Children"),
            html.dd(
                [
                    html.a({"href": f"/runs/{child}", "key": child}, child)
                    for child in loaded.child_ids
                ]
                or "none"
            ),
        ),
        html.section(
            {"class_name": "io", "aria-label": "Payload and output"},
            html.h2("Payload"),
            html.pre({"class_name": "payload", "tabindex": "0"}, _pretty(run.payload)),
            Outcome(run),
        ),
        html.section(
            {"class_name": "streams", "aria-label": "Streams"},
            html.h2("Streams"),
            html.div(
                {"class_name": "tabs", "role": "group", "aria-label": "Stream"},
                [
                    html.button(
                        {
                            "key": key,
                            "type": "button",
                            "aria-pressed": "true" if key == current else "false",
                            "class_name": "tab active" if key == current else "tab",
                            "on_click": lambda _event, key=key: set_selected(key),
                        },
                        key,
                    )
                    for key in keys
                ],
            ),
            StreamView(
                run.id,
                current,
                key=current,
                copy_url=f"/runs/{run.id}/streams/{quote(current, safe='')}.txt",
            )
            if current
            else html.p({"class_name": "empty no-streams"}, _no_streams(run)),
        ),
    )


def _no_streams(run: RunRecord) -> str:
    if run.status.is_final:
        return f"This run wrote no streams: it is {run.status.value.lower()}."
    if run.status is RunStatus.QUEUED:
        return "No streams yet: the run waits for a worker."
    return "No streams yet: they appear here when the task first writes to one."


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def Outcome(run: RunRecord) -> list[VdomDict]:
    """The run's error, its output, or what it is still waiting for: never a bare ``null``."""
    if run.error is not None:
        return [
            html.h2("Error"),
            html.pre({"class_name": "error", "tabindex": "0"}, _pretty(run.error)),
        ]
    if run.status is RunStatus.COMPLETED:
        body: VdomDict = html.pre({"class_name": "output", "tabindex": "0"}, _pretty(run.output))
    elif run.status is RunStatus.EXECUTING:
        body = html.p({"class_name": "output pending"}, "Running… the output appears when it ends.")
    elif run.status is RunStatus.QUEUED:
        body = html.p({"class_name": "output pending"}, "No output yet: the run is queued.")
    else:
        body = html.p(
            {"class_name": "output pending"}, f"No output: the run was {run.status.value.lower()}."
        )
    return [html.h2("Output"), body]


def Timeline(run: RunRecord) -> VdomDict:
    """Queued → executing → final, each step with its time, and between them how long the run
    waited for a worker and how long it ran (counting on in the browser while it does)."""
    final = run.status.value.capitalize() if run.status.is_final else "Final"
    waited = "waited" if run.started_at else "waiting"
    ran = "ran" if run.finished_at else "running"
    canceled_in_queue = run.started_at is None and run.status.is_final
    return html.ol(
        {"class_name": "timeline", "aria-label": "Status timeline"},
        _step("queued", "Queued", run.created_at),
        _step(
            "executing",
            "Executing",
            run.started_at,
            between=None if canceled_in_queue else (waited, run.created_at, run.started_at),
            missing="skipped" if canceled_in_queue else "not yet",
        ),
        _step(
            "final",
            final,
            run.finished_at,
            between=None if run.started_at is None else (ran, run.started_at, run.finished_at),
        ),
    )


def _step(
    name: str,
    label: str,
    moment: datetime | None,
    *,
    between: tuple[str, datetime, datetime | None] | None = None,
    missing: str = "not yet",
) -> VdomDict:
    """One step of the timeline: how long it took to get there (``between``: a word, from,
    to), its name, and when it happened."""
    took: VdomDict | str = ""
    if between is not None:
        word, since, until = between
        took = html.span({"class_name": "between"}, f"{word} ", Duration(since, until))
    return html.li(
        {"class_name": f"step {'done' if moment else 'pending'}", "data-step": name},
        took,
        html.span({"class_name": "step-name"}, label),
        Time(moment, relative=False) if moment else html.span({"class_name": "not-yet"}, missing),
    )


@component
def RunActions(run: RunRecord) -> VdomDict | str:
    """ "Cancel" for a run that has not ended, "Trigger again" (the same task with the same
    payload) for any: for a browser signed in with the secret key only."""
    may_act = use_may_act()
    triggered, set_triggered = use_state(cast(str | None, None))
    problem, set_problem = use_state("")
    busy, set_busy = use_state(False)
    app_runtime = runtime()
    if not may_act:
        return ""

    async def act(action: Callable[[], str | None]) -> None:
        set_busy(True)
        set_problem("")
        try:
            new_run = await asyncio.to_thread(action)
        except Exception as error:  # what the store refused: the page says it
            set_problem(f"That did not work: {error}")
        else:
            if new_run is not None:
                set_triggered(new_run)
        finally:
            set_busy(False)

    def cancel() -> None:
        app_runtime.runs.cancel(run.id)

    def trigger_again() -> str:
        return app_runtime.runs.trigger(run.task_id, run.payload).id

    async def on_cancel(_event: Any) -> None:
        await act(cancel)

    async def on_trigger(_event: Any) -> None:
        await act(trigger_again)

    return html.div(
        {"class_name": "actions"},
        ""
        if run.status.is_final
        else html.button(
            {"type": "button", "class_name": "cancel", "disabled": busy, "on_click": on_cancel},
            "Cancel",
        ),
        html.button(
            {"type": "button", "class_name": "again", "disabled": busy, "on_click": on_trigger},
            "Trigger again",
        ),
        html.p(
            {"class_name": "action-result", "role": "status"},
            html.a({"href": f"/runs/{triggered}", "class_name": "new-run"}, f"Open {triggered}")
            if triggered
            else "",
            html.span({"class_name": "error"}, problem) if problem else "",
        ),
    )


@component
def UnclaimedHint(run: RunRecord) -> VdomDict | str:
    """After a queued run waited UNCLAIMED_HINT_AFTER for a worker: which task it needs, and
    how to start a worker for it. One timer per page, for the moment the hint appears."""
    due = run.created_at + UNCLAIMED_HINT_AFTER
    shown, set_shown = use_state(utcnow() >= due)

    @use_effect(dependencies=[due])
    async def reveal() -> None:
        await asyncio.sleep(max(0.0, (due - utcnow()).total_seconds()))
        set_shown(True)

    if not shown:
        return ""
    return html.aside(
        {"class_name": "hint-box", "role": "note", "aria-label": "No worker"},
        html.p(
            html.strong("No worker has claimed this run yet. "),
            "It needs a worker that serves the task ",
            html.code(run.task_id),
            ". Start one with the module that declares it (",
            html.code(f'@task(id="{run.task_id}")'),
            "), with the server's secret key in RUNSTREAM_SECRET_KEY:",
        ),
        html.pre({"class_name": "command"}, "runstream worker --tasks <your.module>"),
    )


def _link_row(label: str, run_id: str | None) -> list[VdomDict]:
    return [html.dt(label), html.dd(html.a({"href": f"/runs/{run_id}"}, run_id) if run_id else "—")]
