"""``/openapi.json``: an OpenAPI 3.1 description of the HTTP API — Durable Streams at
``/v1/stream/{path}``, the runs API at ``/api/v1``, its access tokens, and ``/healthz``.

It is written here by hand, beside the routes it describes, rather than generated from them:
the faces parse their headers and bodies themselves, so there is nothing to generate from. The
test suite keeps it honest by fuzzing the server with it (schemathesis): every answer must be
one the description allows, and none a 5xx.

The websocket endpoints (``/realtime/v2/streams/...``) are not HTTP operations; they are
described in ``docs/websocket-protocol.md``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

blueprint = Blueprint("openapi", __name__)

JSON = "application/json"
ERROR = {"$ref": "#/components/schemas/Error"}
ANY_BODY: dict[str, Any] = {"*/*": {"schema": {}}}


def _refusal(description: str) -> dict[str, Any]:
    """A refusal of the runs API: JSON that says what was wrong."""
    return {"description": description, "content": {JSON: {"schema": ERROR}}}


def _text(description: str) -> dict[str, Any]:
    """A refusal of Durable Streams: plain text that says what was wrong."""
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


WHOLE_NUMBER = {"type": "string", "pattern": "^[0-9]+$"}
STREAM_PATH = _path("path", "The stream's path: any text, slashes included (percent-encoded).")
RUN_ID = _path("run_id", "A run id, as the trigger answered it (run_...).")
STREAM_HEADERS = {
    "Stream-Next-Offset": {
        "description": "Where the next read starts.",
        "schema": {"type": "string"},
    },
    "Stream-Closed": {
        "description": "Present (true) once the stream is closed.",
        "schema": {"type": "string"},
    },
}
# Refusals every stream operation may answer.
STREAM_REFUSALS = {
    "400": _text("The request is malformed: the body says what is wrong."),
    "401": _text("No valid credentials: send Authorization: Bearer <secret key or token>."),
    "403": _text("The credentials may not do this."),
    "404": _text("No such stream."),
    "408": _text("The body did not arrive in time."),
    "409": _text("The stream's state refuses it (closed, another content type, a Stream-Seq)."),
    "410": _text("The stream expired or was deleted."),
    "413": _text("Too large: a message, the body or the stream."),
    "503": _text("The server is busy: try again after Retry-After seconds."),
}
API_REFUSALS = {
    "400": _refusal("The request is malformed."),
    "401": _refusal("No valid credentials."),
    "403": _refusal("The credentials may not do this."),
    "404": _refusal("No such run, or no such path."),
    "405": _refusal("Not a method of this path."),
    "408": _refusal("The body did not arrive in time."),
    "409": _refusal("The run's state refuses it."),
    "413": _refusal("The body is too large."),
    "503": _refusal("The server is busy: try again after Retry-After seconds."),
}
JSON_OBJECT_BODY = {"required": False, "content": {JSON: {"schema": {"type": "object"}}}}


def _stream_operations() -> dict[str, Any]:
    producer = [
        _header("Producer-Id", "An idempotent producer's id."),
        _header("Producer-Epoch", "The producer's epoch.", WHOLE_NUMBER),
        _header("Producer-Seq", "The request's sequence number in the epoch.", WHOLE_NUMBER),
    ]
    return {
        "parameters": [STREAM_PATH],
        "put": {
            "summary": "Create a stream (idempotent: the same configuration answers 200).",
            "parameters": [
                _header("Content-Type", "The stream's content type."),
                _header("Stream-TTL", "Seconds the stream lives after its last use.", WHOLE_NUMBER),
                _header("Stream-Expires-At", "When the stream expires (RFC 3339)."),
                _header("Stream-Closed", "true: create it closed."),
                _header("Stream-Forked-From", "Fork this stream's messages."),
                _header("Stream-Fork-Offset", "Up to which offset of the source."),
                _header("Stream-Fork-Sub-Offset", "A message count past that offset."),
            ],
            "requestBody": {"required": False, "content": ANY_BODY},
            "responses": {
                "201": {"description": "Created.", "headers": STREAM_HEADERS},
                "200": {"description": "It existed with this configuration."},
                **STREAM_REFUSALS,
            },
        },
        "post": {
            "summary": "Append messages, or close the stream (Stream-Closed: true).",
            "parameters": [
                _header("Content-Type", "Must match the stream's."),
                _header("Stream-Closed", "true: close the stream (after these messages)."),
                _header("Stream-Seq", "Must be greater than the last one accepted."),
                *producer,
            ],
            "requestBody": {"required": False, "content": ANY_BODY},
            "responses": {
                "200": {"description": "A producer's new messages, stored."},
                "204": {"description": "Stored, or a retry recognised.", "headers": STREAM_HEADERS},
                **STREAM_REFUSALS,
            },
        },
        "get": {
            "summary": "Read from an offset: at once, by long-poll, or as server-sent events.",
            "parameters": [
                _query("offset", "-1 (the start), now, or a Stream-Next-Offset value."),
                _query("live", "long-poll or sse.", {"enum": ["long-poll", "sse"]}),
                _query("cursor", "The Stream-Cursor of the last long-poll answer."),
                _query("token", "A read token, for clients that cannot send headers."),
            ],
            "responses": {
                "200": {"description": "Messages.", "content": ANY_BODY, "headers": STREAM_HEADERS},
                "204": {"description": "A long-poll that timed out with no news."},
                "304": {"description": "Not modified (If-None-Match)."},
                **STREAM_REFUSALS,
            },
        },
        "head": {
            "summary": "The stream's metadata.",
            "responses": {
                "200": {"description": "It exists.", "headers": STREAM_HEADERS},
                **STREAM_REFUSALS,
            },
        },
        "delete": {
            "summary": "Delete the stream.",
            "responses": {"204": {"description": "Deleted."}, **STREAM_REFUSALS},
        },
    }


def _run_operation(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [RUN_ID],
        "responses": {
            "200": {"description": "The run.", "content": {JSON: {"schema": RUN}}},
            **API_REFUSALS,
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": False, "content": {JSON: {"schema": body}}}
    return operation


NULLABLE_TIME = {"type": ["string", "null"]}
RUN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "task_id", "status", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "task_id": {"type": "string"},
        "status": {"enum": ["QUEUED", "EXECUTING", "COMPLETED", "FAILED", "CANCELED"]},
        "payload": {},
        "output": {},
        "error": {},
        "parent_run_id": {"type": ["string", "null"]},
        "root_run_id": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "started_at": NULLABLE_TIME,
        "finished_at": NULLABLE_TIME,
        "duration_ms": {"type": ["integer", "null"]},
    },
}
WORKER = {"type": "object", "properties": {"worker_id": {"type": "string"}}}


def _api_paths() -> dict[str, Any]:
    token = {
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string"}},
    }
    return {
        "/api/v1/tasks/{task_id}/trigger": {
            "post": {
                "summary": "Queue a run of a task.",
                "description": "With the secret key, or a public token with the scope "
                "trigger:tasks:<task_id> (which may not set parent_run_id). The answer's "
                "public_access_token reads the new run (read:runs:<run id>).",
                "parameters": [_path("task_id", "The task's id.")],
                "requestBody": JSON_OBJECT_BODY,
                "responses": {
                    "201": {
                        "description": "Queued: its id and a token to read it.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["id", "public_access_token"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "public_access_token": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **API_REFUSALS,
                },
            }
        },
        "/api/v1/runs": {
            "get": {
                "summary": "Runs, newest first.",
                "parameters": [
                    _query("status", "Only runs of this status."),
                    _query("task", "Only runs of this task."),
                    _query("cursor", "The next_cursor of the page before."),
                    _query("limit", "1 to 100.", WHOLE_NUMBER),
                ],
                "responses": {
                    "200": {
                        "description": "A page of runs.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["data", "next_cursor"],
                                    "properties": {
                                        "data": {"type": "array", "items": RUN},
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    **API_REFUSALS,
                },
            }
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "summary": "A run, with its streams and child runs.",
                "description": "With after (an updated_at the client has seen) and wait, the "
                "answer waits until the run's updated_at is another, or the wait ends (then "
                "it is the run as it is): a live view of a run without polling.",
                "parameters": [
                    RUN_ID,
                    _query(
                        "after",
                        "The run's updated_at as last seen: answer once it has changed.",
                    ),
                    _query("wait", "How long to wait for a change: 0 to 60 seconds.", WHOLE_NUMBER),
                ],
                "responses": {
                    "200": {"description": "The run.", "content": {JSON: {"schema": RUN}}},
                    **API_REFUSALS,
                },
            }
        },
        "/api/v1/runs/claim": {
            "post": {
                "summary": "A worker claims queued runs of its tasks.",
                "requestBody": JSON_OBJECT_BODY,
                "responses": {
                    "200": {
                        "description": "The runs now this worker's.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["runs"],
                                    "properties": {"runs": {"type": "array", "items": RUN}},
                                }
                            }
                        },
                    },
                    **API_REFUSALS,
                },
            }
        },
        "/api/v1/runs/{run_id}/heartbeat": {
            "post": _run_operation("The worker still executes the run.", WORKER)
        },
        "/api/v1/runs/{run_id}/complete": {
            "post": _run_operation("The run succeeded, with its output.", WORKER)
        },
        "/api/v1/runs/{run_id}/fail": {
            "post": _run_operation("The run failed, with its error.", WORKER)
        },
        "/api/v1/runs/{run_id}/cancel": {"post": _run_operation("Cancel the run.", None)},
        "/api/v1/auth/public-tokens": {
            "post": {
                "summary": "A token for browsers, limited to scopes and a lifetime.",
                "description": "Body: {scopes, expiration}. Scopes: read:runs (every run), "
                "read:runs:<run id> (one run and its streams), trigger:tasks:<task id> (runs "
                "of that task, and nothing else). Expiration: seconds, or 30s, 15m, 1h, 7d.",
                "requestBody": JSON_OBJECT_BODY,
                "responses": {
                    "201": {"description": "The token.", "content": {JSON: {"schema": token}}},
                    **API_REFUSALS,
                },
            }
        },
    }


def description() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Runstream",
            "version": "1",
            "description": "Durable, resumable streams for runs: the Durable Streams protocol "
            "and a runs API.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/stream/{path}": _stream_operations(),
            **_api_paths(),
            "/healthz": {
                "get": {
                    "summary": "Whether this server can serve: its database and its hub.",
                    "security": [],
                    "responses": {
                        "200": {"description": "It can.", "content": {JSON: {"schema": {}}}},
                        "503": {"description": "Its database does not answer."},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The secret key, or a public token (reading runs, or "
                    "triggering one task).",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                }
            },
        },
    }


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(description())
