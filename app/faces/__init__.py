"""The faces: thin protocol layers over the core, each turning requests into core calls and the
core's answers and refusals into its own (:mod:`.errors` holds the one table for refusals).

- :mod:`.durable_streams`: the Durable Streams HTTP protocol at ``/v1/stream/<path>``;
- :mod:`.api`: the runs API, JSON at ``/api/v1``;
- :mod:`.websockets`: run streams over websockets at ``/realtime/v2/streams``;
- :mod:`.health`: ``/healthz``, for load balancers;
- :mod:`.openapi`: ``/openapi.json``, the description of the HTTP API;
- :mod:`.live`: the budget of live readers that the faces share.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..core.errors import TimedOut
from . import api, durable_streams, health, live, openapi, websockets


def init_app(app: Flask) -> None:
    live.init_app(app)
    app.register_blueprint(durable_streams.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(openapi.blueprint)
    api.init_app(app)
    websockets.init_app(app)
    # A body too slow to arrive can be any request's, the dashboard's forms too.
    app.register_error_handler(TimedOut, too_slow)
    # Unknown paths and wrong methods never reach a blueprint (nor do paths its routes cannot
    # match, such as a stream path with a newline): each face answers them in its own form.
    app.register_error_handler(HTTPException, http_error)


def http_error(error: HTTPException) -> Response | HTTPException:
    """JSON under /api/, plain text under /v1/stream/; elsewhere as Flask answers it."""
    if request.path.startswith(api.PREFIX):
        return api.http_error(error)
    if request.path.startswith(durable_streams.PREFIX):
        response = durable_streams.error_response(error.code or 500, error.description or "")
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
    return error


def too_slow(error: TimedOut) -> Response:
    return Response(error.message + "\n", status=408, content_type="text/plain; charset=utf-8")
