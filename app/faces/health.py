"""``GET /healthz``: whether this server can serve, for load balancers and orchestrators.

The database decides: without it nothing can be stored or read, and the answer is 503. A hub
that cannot reach the other processes (Redis down) slows live readers to the store's timer but
loses nothing, so it is reported and the answer stays 200: taking every server out of the
balancer for it would turn a slower service into none.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..runtime import runtime

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    app_runtime = runtime()
    database = app_runtime.store.check()
    hub = app_runtime.hub.problem()
    response = jsonify(database=database or "ok", hub=hub or "ok")
    response.headers["Cache-Control"] = "no-store"
    return response, 503 if database else 200
