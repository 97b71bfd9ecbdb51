"""The faces: thin protocol layers over the core, each turning requests into core calls and the
core's answers and refusals into its own (:mod:`.errors` holds the one table for refusals).

- :mod:`.durable_streams`: the Durable Streams HTTP protocol at ``/v1/stream/<path>``;
- :mod:`.api`: the runs API, JSON at ``/api/v1``;
- :mod:`.websockets`: run streams over websockets at ``/realtime/v2/streams``;
- :mod:`.health`: ``/healthz``, for load balancers;
- :mod:`.live`: the budget of live readers that the faces share.
"""

from __future__ import annotations

from flask import Flask, Response

from ..core.errors import TimedOut
from . import api, durable_streams, health, live, websockets


def init_app(app: Flask) -> None:
    live.init_app(app)
    app.register_blueprint(durable_streams.blueprint)
    app.register_blueprint(health.blueprint)
    api.init_app(app)
    websockets.init_app(app)
    # A body too slow to arrive can be any request's, the dashboard's forms too.
    app.register_error_handler(TimedOut, too_slow)


def too_slow(error: TimedOut) -> Response:
    return Response(error.message + "\n", status=408, content_type="text/plain; charset=utf-8")
