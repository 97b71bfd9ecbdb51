"""The smallest apps the layers benchmark serves (bench/layers.py), to tell what each layer in
front of Runstream costs a request: a bare WSGI callable, and Flask with one route. Both answer
a stream's HEAD with 200 and its PUT with 201, as the ping expects, and do nothing else.

    gunicorn -k gevent --chdir bench layer_apps:bare
    gunicorn -k gevent --chdir bench layer_apps:flask_app
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status = "201 Created" if environ["REQUEST_METHOD"] == "PUT" else "200 OK"
    start_response(status, [("Content-Length", "0")])
    return [b""]


flask_app = Flask(__name__)


@flask_app.route("/v1/stream/<path:path>", methods=["HEAD", "GET", "PUT"])
def stream(path: str) -> Response:
    return Response(status=201 if request.method == "PUT" else 200)
