"""The dashboard's pages, as ReactPy components that read the store in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import current_app
from reactpy import component, html, use_effect, use_location, use_state
from reactpy.core.types import ComponentType, VdomDict

from runstream.components import StreamView

from ..core.follower import AsyncTopicWatch
from ..core.store import StreamInfo
from ..runs.runs import RunRecord, RunStatus
from ..runtime import Runtime, runtime

RUNS_TOPIC = "runs"
# Pages load again this often even without news while they show a run executing, whose
# duration ticks and whose streams appear; other pages less often, since all the open pages of
# a server load on its one event loop.
REFRESH_SECONDS = 1.0
IDLE_REFRESH_SECONDS = 10.0
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
        html.nav(
            html.a({"href": "/runs", "class_name": "brand"}, "Runstream"),
            " runs",
            "" if runtime().auth.disabled else SignOut(),
        ),
        html.main(content),
    )


def SignOut() -> VdomDict:
    """The "Sign out" button: a plain form that POSTs to /logout, the browser's own submit
    (with its Origin header, which the sign-out checks), not an event of the page's view."""
    return html.form(
        {
            "method": "post",
            "action": "/logout",
            "class_name": "sign-out",
            "style": {"margin_left": "auto"},  # at the navigation bar's right end
        },
        html.button({"type": "submit"}, "Sign out"),
    )


def use_live(
    load: Callable[[Runtime], T], dependencies: list[Any], *, ticking: Callable[[T], bool]
) -> T | None:
    """``load(runtime)``, run in a thread, again whenever a run changes, and every second while
    ``ticking(loaded)`` (it shows a run executing), every ten seconds otherwise.

    The page renders again only when what it loaded changed, or while it ticks: all the open
    pages of a server render on its one event loop, and an idle page costs it no render and no
    update sent."""
    value, set_value = use_state(cast(T | None, None))
    app_runtime = runtime()

    @use_effect(dependencies=dependencies)
    async def refresh() -> None:
        shown: T | None = None
        async with AsyncTopicWatch(app_runtime.hub, RUNS_TOPIC) as news:
            while True:
                loaded = await asyncio.to_thread(load, app_runtime)
                live = ticking(loaded)
                if shown is None or loaded != shown or live:
                    set_value(loaded)
                shown = loaded
                await news.wait(REFRESH_SECONDS if live else IDLE_REFRESH_SECONDS)

    return value


def _ticks(run: RunRecord) -> bool:
    """The run's duration grows while it is shown: it started and has not finished."""
    return run.started_at is not None and run.finished_at is None


@component
def RunsPage() -> VdomDict:
    status, set_status = use_state("")
    task_filter, set_task_filter = use_state("")

    def load(app_runtime: Runtime) -> list[tuple[RunRecord, int]]:
        page = app_runtime.runs.page(status=status or None, task_id=task_filter or None, limit=50)
        return [(run, len(app_runtime.run_streams.streams(run.id))) for run in page.runs]

    def ticking(rows: list[tuple[RunRecord, int]]) -> bool:
        return any(_ticks(run) for run, _ in rows)

    rows = use_live(load, [status, task_filter], ticking=ticking) or []
    return html.section(
        {"class_name": "runs"},
        html.header(
            html.h1("Runs"),
            # `runstream serve --demo` runs the demo worker in the server: offer another run.
            DemoButton() if current_app.config.get("DEMO") else "",
            html.div(
                {"class_name": "filters"},
                html.select(
                    {
                        "aria-label": "status",
                        "value": status,
                        "on_change": lambda event: set_status(event["target"]["value"]),
                    },
                    html.option({"value": ""}, "All statuses"),
                    [html.option({"value": s.value, "key": s.value}, s.value) for s in RunStatus],
                ),
                html.input(
                    {
                        "aria-label": "task",
                        "placeholder": "Task id",
                        "value": task_filter,
                        "on_change": lambda event: set_task_filter(event["target"]["value"]),
                    }
                ),
            ),
        ),
        html.table(
            {"class_name": "run-table"},
            html.thead(
                html.tr(
                    [
                        html.th({"key": name}, name)
                        for name in ("Run", "Task", "Status", "Created", "Duration", "Streams")
                    ]
                )
            ),
            html.tbody(
                [
                    html.tr(
                        {"key": run.id, "class_name": "run-row", "data-run-id": run.id},
                        html.td(html.a({"href": f"/runs/{run.id}"}, run.id)),
                        html.td(run.task_id),
                        html.td(StatusBadge(run.status)),
                        html.td(_when(run.to_json()["created_at"])),
                        html.td(_duration(run.duration_ms)),
                        html.td(str(streams)),
                    )
                    for run, streams in rows
                ]
            ),
        ),
        html.p({"class_name": "empty"}, "No runs yet.") if not rows else "",
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
        html.button({"class_name": "demo-again", "on_click": run_again}, "Run the demo again"),
        html.a({"href": f"/runs/{started}", "class_name": "demo-run"}, f"Watch {started}")
        if started
        else "",
    )


def StatusBadge(status: RunStatus) -> VdomDict:
    return html.span({"class_name": f"badge {status.value.lower()}"}, status.value)


@component
def RunPage(run_id: str) -> VdomDict:
    selected, set_selected = use_state(cast(str | None, None))

    def load(app_runtime: Runtime) -> tuple[RunRecord, list[StreamInfo], list[RunRecord]] | str:
        try:
            run = app_runtime.runs.get(run_id)
        except Exception as error:  # a bad or unknown run id: say so on the page
            return str(error)
        return run, app_runtime.run_streams.streams(run_id), app_runtime.runs.children(run_id)

    loaded = use_live(
        load, [run_id], ticking=lambda loaded: not isinstance(loaded, str) and _ticks(loaded[0])
    )
    if loaded is None:
        return html.p("Loading…")
    if isinstance(loaded, str):
        return html.p({"class_name": "error"}, loaded)
    run, run_streams, children = loaded
    keys = [stream.path.rsplit("/", 1)[1] for stream in run_streams]
    current = selected if selected in keys else (keys[0] if keys else None)
    return html.article(
        {"class_name": "run", "data-status": run.status.value},
        html.header(
            html.h1(run.id),
            StatusBadge(run.status),
            html.span({"class_name": "task"}, run.task_id),
            html.span({"class_name": "duration"}, _duration(run.duration_ms)),
        ),
        html.dl(
            {"class_name": "family"},
            _link_row("Parent", run.parent_run_id),
            _link_row("Root", run.root_run_id if run.root_run_id != run.id else None),
            html.dt("Children"),
            html.dd(
                [
                    html.a({"href": f"/runs/{child.id}", "key": child.id}, child.id)
                    for child in children
                ]
                or "none"
            ),
        ),
        html.section(
            {"class_name": "io"},
            html.h2("Payload"),
            html.pre(json.dumps(run.payload, indent=2)),
            html.h2("Error" if run.error is not None else "Output"),
            html.pre(
                {"class_name": "error" if run.error is not None else "output"},
                json.dumps(run.error if run.error is not None else run.output, indent=2),
            ),
        ),
        html.section(
            {"class_name": "streams"},
            html.div(
                {"class_name": "tabs", "role": "tablist"},
                [
                    html.button(
                        {
                            "key": key,
                            "role": "tab",
                            "class_name": "tab active" if key == current else "tab",
                            "on_click": lambda _event, key=key: set_selected(key),
                        },
                        key,
                    )
                    for key in keys
                ],
            ),
            StreamView(run.id, current, key=current) if current else html.p("No streams yet."),
        ),
    )


def _link_row(label: str, run_id: str | None) -> list[VdomDict]:
    return [html.dt(label), html.dd(html.a({"href": f"/runs/{run_id}"}, run_id) if run_id else "—")]


def _when(timestamp: str | None) -> str:
    return (timestamp or "").replace("T", " ")[:19]


def _duration(milliseconds: int | None) -> str:
    if milliseconds is None:
        return "—"
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    return f"{milliseconds / 1000:.1f} s"
