"""The runs API, JSON over HTTP at ``/api/v1``: triggering runs, reading them, and the calls a
worker makes to claim, keep, complete or fail them.

Every answer under ``/api/`` is JSON, errors included: ``{"error": "<what was wrong>"}`` with the
status that says what kind of error it was, for refusals of the core as for unknown paths (404),
wrong methods (405) and failures of the server itself (500).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from runstream.identifiers import check_task_id

from ..core import inputs
from ..core.errors import Invalid
from ..core.json_messages import parse_strict
from ..runs.auth import parse_duration
from ..runs.runs import MAX_PAGE_SIZE, RunRecord
from ..runtime import runtime
from .errors import REFUSALS, answer_for, http_headers, message_of
from .requests import caller, read_body

PREFIX = "/api/"
blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)


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
    """Queue a run of a task. Body: ``{"payload": ..., "parent_run_id": optional}``."""
    caller().require_secret("triggering a run")
    body = json_object()
    check_task_id(task_id)
    parent_run_id = optional_string(body, "parent_run_id")
    run = runtime().runs.trigger(task_id, body.get("payload"), parent_run_id)
    token = runtime().auth.create_public_token(
        [f"read:runs:{run.id}"], parse_duration(runtime().settings.public_token_ttl)
    )
    return jsonify(id=run.id, public_access_token=token), 201


@blueprint.get("/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """A run with its streams and its child runs."""
    caller().require_run(run_id)
    return jsonify(run_details(runtime().runs.get(run_id)))


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


def run_details(run: RunRecord) -> dict[str, Any]:
    details = run.to_json()
    details["streams"] = [
        {
            "key": stream.path.rsplit("/", 1)[1],
            "chunk_count": stream.next_position,
            "bytes": stream.total_bytes,
            "closed": stream.closed,
        }
        for stream in runtime().run_streams.streams(run.id)
    ]
    details["child_run_ids"] = [child.id for child in runtime().runs.children(run.id)]
    return details


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
