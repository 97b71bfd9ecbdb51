"""The faces: thin protocol layers over the core, each turning requests into core calls and the
core's answers and refusals into its own (:mod:`.errors` holds the one table for refusals).

- :mod:`.durable_streams`: the Durable Streams HTTP protocol at ``/v1/stream/<path>``;
- :mod:`.api`: the runs API, JSON at ``/api/v1``;
- :mod:`.websockets`: run streams over websockets at ``/realtime/v2/streams``.
"""

from __future__ import annotations

from flask import Flask

from . import api, durable_streams, websockets


def init_app(app: Flask) -> None:
    app.register_blueprint(durable_streams.blueprint)
    api.init_app(app)
    websockets.init_app(app)
