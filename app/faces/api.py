"""The runs API, JSON over HTTP at ``/api/v1``: triggering runs, reading them, and the calls a
worker makes to claim, keep, complete or fail them.

Every answer under ``/api/`` is JSON, errors included: ``{"error": "<what was wrong>"}`` with the
status that says what kind of error it was, for refusals of the core as for unknown paths (404),
wrong methods (405) and failures of the server itself (500).

A run is read live without polling: ``GET /api/v1/runs/<id>?after=<updated_at>&wait=<seconds>``
answers once the run's ``updated_at`` is no longer ``after``, or when the wait ends, woken by
the hub's ``runs`` topic (published whenever a run is triggered, claimed or ends).

The ReactPy run hooks rendered inside this server call the same code in-process
(:class:`InProcessRuns`, kept under :data:`runstream.runs.LOCAL_RUN_SOURCE`), with the same
checks of the credential they were handed: a hook is no way around a token's scope.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from runstream.errors import ApiError
from runstream.identifiers import check_task_id
from runstream.runs import LOCAL_RUN_SOURCE, Run
from runstream.tasks import TriggeredRun

from ..core import inputs
from ..core.errors import Invalid
from ..core.follower import AsyncTopicWatch
from ..core.hub import Commit
from ..core.json_messages import parse_strict
from ..runs.auth import READ_RUN_PREFIX, Principal, parse_duration
from ..runs.runs import MAX_PAGE_SIZE, RUNS_TOPIC, RunRecord
from ..runtime import Runtime, runtime, runtime_of
from . import live
from .errors import REFUSALS, answer_for, http_headers, message_of
from .requests import caller, read_body

PREFIX = "/api/"
blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
# How long a wait for a run's change may be: the SDK asks for at most 20 s (its
# runstream.runs.MAX_WAIT_SECONDS, under its read timeout); other clients may wait longer.
MAX_RUN_WAIT_SECONDS = 60
P = ParamSpec("P")
R = TypeVar("R")


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
    # The run hooks rendered inside this server read and trigger through this, in-process.
    app.extensions[LOCAL_RUN_SOURCE] = InProcessRuns(runtime_of(app))


def refused(error: Exception) -> tuple[Response, int]:
    response = jsonify(error=message_of(error))
    response.headers.update(http_headers(error))
    return response, answer_for(error).status


for refusal in REFUSALS:
    blueprint.register_error_handler(refusal, refused)


def http_error(error: HTTPException) -> Response:
    """An HTTP error (an unknown path, a wrong method) under /api/, as JSON."""
    response = jsonify(error=error.description or error.name)
    response.status_code = error.code or 500
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@blueprint.post("/tasks/<task_id>/trigger")
def trigger(task_id: str) -> tuple[Response, int]:
    """Queue a run of a task. Body: ``{"payload": ..., "parent_run_id": optional}``. The secret
    key may trigger any task, a token with ``trigger:tasks:<task_id>`` that one task."""
    principal = caller()
    # Refused before the body is read, as every route refuses: a caller that may not trigger
    # this task learns nothing of how its body would have been taken.
    authorize_trigger(principal, task_id)
    body = json_object()
    parent_run_id = optional_string(body, "parent_run_id")
    triggered = trigger_run(runtime(), principal, task_id, body.get("payload"), parent_run_id)
    return jsonify(id=triggered.id, public_access_token=triggered.public_access_token), 201


def trigger_run(
    app_runtime: Runtime,
    principal: Principal,
    task_id: str,
    payload: Any,
    parent_run_id: str | None,
) -> TriggeredRun:
    """Queue a run, if ``principal`` may: the one trigger of the API and of the hooks. The
    answer's token reads the new run, whoever triggered it."""
    authorize_trigger(principal, task_id)
    if parent_run_id is not None:
        # A child shows in its parent's run tree: only a worker (the secret key) makes one.
        principal.require_secret("triggering a child run (parent_run_id)")
    run = app_runtime.runs.trigger(task_id, payload, parent_run_id)
    token = app_runtime.auth.create_public_token(
        [READ_RUN_PREFIX + run.id], parse_duration(app_runtime.settings.public_token_ttl)
    )
    return TriggeredRun(run.id, token)


def authorize_trigger(principal: Principal, task_id: str) -> None:
    """400 for an ill-formed task id, 403 unless the secret key or a token for this task."""
    principal.require_trigger(check_task_id(task_id))


@blueprint.get("/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """A run with its streams and its child runs; with ``after`` (an ``updated_at`` the client
    has seen) and ``wait`` (seconds), once the run has changed since or the wait has ended."""
    caller().require_run(run_id)
    after = request.args.get("after")
    wait = inputs.whole_number(
        "wait", request.args.get("wait", "0"), minimum=0, maximum=MAX_RUN_WAIT_SECONDS
    )
    app_runtime = runtime()
    if after is None or wait == 0:
        return jsonify(run_details(app_runtime, app_runtime.runs.get(run_id)))
    return jsonify(run_details(app_runtime, wait_for_change(app_runtime, run_id, after, wait)))


def wait_for_change(app_runtime: Runtime, run_id: str, after: str, wait: float) -> RunRecord:
    """The run once its ``updated_at`` is not ``after``, or as it is after ``wait`` seconds.

    It listens to the runs topic before its first read, so no change slips in between; on a
    hub that may lose news it reads again at the hub's resync interval. While it waits it holds
    a live reader's place, given back as soon as its client has gone."""
    news = threading.Event()

    def listener(_commit: Commit) -> None:
        news.set()

    hub = app_runtime.hub
    hub.add_listener(RUNS_TOPIC, listener)
    try:
        run = app_runtime.runs.get(run_id)
        if not unchanged(run, after):
            return run
        reader = live.admit(news.set)
        try:
            deadline = time.monotonic() + wait
            while (remaining := deadline - time.monotonic()) > 0 and not reader.client_gone:
                news.wait(min(remaining, hub.resync_interval or remaining))
                news.clear()
                run = app_runtime.runs.get(run_id)
                if not unchanged(run, after):
                    return run
            return run
        finally:
            reader.close()
    finally:
        hub.remove_listener(RUNS_TOPIC, listener)


def unchanged(run: RunRecord, after: str) -> bool:
    """Whether the run's ``updated_at`` is still the one the client last saw."""
    return bool(run.to_json()["updated_at"] == after)


@blueprint.get("/runs")
def list_runs() -> Response:
    """Runs, newest first. Query: ``status``, ``task``, ``cursor``, ``limit`` (1 to 100)."""
    caller().require_all_runs()
    page = runtime().runs.page(
        status=request.args.get("status") or None,
        task_id=request.args.get("task") or None,
        cursor=request.args.get("cursor") or None,
        limit=inputs.whole_number(
            "limit", request.args.get("limit", "20"), minimum=1, maximum=MAX_PAGE_SIZE
        ),
    )
    return jsonify(data=[run.to_json() for run in page.runs], next_cursor=page.next_cursor)


@blueprint.post("/runs/claim")
def claim() -> Response:
    """Body: ``{"worker_id": ..., "task_ids": [...], "limit": 1}``; the runs now this worker's."""
    caller().require_secret("claiming runs")
    body = json_object()
    task_ids = body.get("task_ids")
    if not isinstance(task_ids, list) or not all(isinstance(task, str) for task in task_ids):
        raise Invalid("task_ids must be a list of task ids")
    limit = inputs.json_whole_number(
        "limit", body.get("limit", 1), minimum=1, maximum=MAX_PAGE_SIZE
    )
    claimed = runtime().runs.claim(required_string(body, "worker_id"), task_ids, limit)
    return jsonify(runs=[run.to_json() for run in claimed])


@blueprint.post("/runs/<run_id>/heartbeat")
def heartbeat(run_id: str) -> Response:
    """The worker still executes the run; the answer's status says if it was canceled."""
    caller().require_secret("sending a heartbeat")
    worker_id = required_string(json_object(), "worker_id")
    return jsonify(runtime().runs.heartbeat(run_id, worker_id).to_json())


@blueprint.post("/runs/<run_id>/complete")
def complete(run_id: str) -> Response:
    """Body: ``{"worker_id": ..., "output": ...}``."""
    caller().require_secret("completing a run")
    body = json_object()
    run = runtime().runs.complete(run_id, required_string(body, "worker_id"), body.get("output"))
    return jsonify(run.to_json())


@blueprint.post("/runs/<run_id>/fail")
def fail(run_id: str) -> Response:
    """Body: ``{"worker_id": ..., "error": {"name": ..., "message": ...}}``."""
    caller().require_secret("failing a run")
    body = json_object()
    if body.get("error") is None:
        raise Invalid("error is required: say what went wrong")
    run = runtime().runs.fail(run_id, required_string(body, "worker_id"), body["error"])
    return jsonify(run.to_json())


@blueprint.post("/runs/<run_id>/cancel")
def cancel(run_id: str) -> Response:
    caller().require_secret("canceling a run")
    return jsonify(runtime().runs.cancel(run_id).to_json())


@blueprint.post("/auth/public-tokens")
def create_public_token() -> tuple[Response, int]:
    """Body: ``{"scopes": ["read:runs:<id>" | "read:runs"], "expiration": "1h"}``."""
    caller().require_secret("creating an access token")
    body = json_object()
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise Invalid('scopes must be a list such as ["read:runs:run_..."]')
    expiration = body.get("expiration", "1h")
    if not isinstance(expiration, str | int) or isinstance(expiration, bool):
        raise Invalid('expiration must be seconds or a duration such as "1h"')
    token = runtime().auth.create_public_token(scopes, inputs.duration("expiration", expiration))
    return jsonify(token=token), 201


def run_details(app_runtime: Runtime, run: RunRecord) -> dict[str, Any]:
    details = run.to_json()
    details["streams"] = [
        {
            "key": stream.path.rsplit("/", 1)[1],
            "chunk_count": stream.next_position,
            "bytes": stream.total_bytes,
            "closed": stream.closed,
        }
        for stream in app_runtime.run_streams.streams(run.id)
    ]
    details["child_run_ids"] = [child.id for child in app_runtime.runs.children(run.id)]
    return details


class InProcessRuns:
    """The runs API for the run hooks rendered inside this server (a :class:`RunSource`):
    the same reads, waits and triggers as the routes, with the same checks of the credential
    the hook was handed, and its refusals as the :class:`ApiError` the HTTP API's would be.

    A hook handed no credential reads as the server itself, as ``use_realtime_stream`` does
    in-process (the dashboard's pages, behind its sign-in); a trigger always needs one."""

    def __init__(self, app_runtime: Runtime) -> None:
        self._runtime = app_runtime

    async def retrieve(
        self, run_id: str, *, access_token: str | None, after: str | None, wait_in_seconds: int
    ) -> Run:
        """As ``GET /api/v1/runs/<id>?after=&wait=``, waiting on the event loop rather than in
        a thread (:func:`wait_for_change` blocks its request's): every open page of the server
        shares the loop, and a thread held per waiting hook would soon use up the pool."""
        app_runtime = self._runtime
        if access_token is not None:
            principal = await self._call(app_runtime.auth.authenticate_in_process, access_token)
            await self._call(principal.require_run, run_id)
        async with AsyncTopicWatch(app_runtime.hub, RUNS_TOPIC) as news:
            deadline = time.monotonic() + wait_in_seconds
            while True:
                run = await self._call(app_runtime.runs.get, run_id)
                remaining = deadline - time.monotonic()
                if after is None or not unchanged(run, after) or remaining <= 0:
                    return Run.from_json(await self._call(run_details, app_runtime, run))
                await news.wait(min(remaining, app_runtime.hub.resync_interval or remaining))

    async def trigger(
        self, task_id: str, payload: Any, *, access_token: str | None
    ) -> TriggeredRun:
        app_runtime = self._runtime
        principal = await self._call(app_runtime.auth.authenticate_in_process, access_token)
        return await self._call(trigger_run, app_runtime, principal, task_id, payload, None)

    @staticmethod
    async def _call(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``function(*args)`` in a thread (the store blocks), refused as the API refuses."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except REFUSALS as error:
            raise ApiError(answer_for(error).status, message_of(error)) from error


def json_object() -> dict[str, Any]:
    body = read_body()
    if not body:
        return {}
    value = parse_strict(body)
    if not isinstance(value, dict):
        raise Invalid("the body must be a JSON object")
    return value


def required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} is required and must be a non-empty string")
    return value


def optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    return value
