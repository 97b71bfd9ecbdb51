"""A plain request: its round trip to each server, and what each layer in front of Runstream
costs it.

``raw_ping`` times HEAD requests of a stream over one keep-alive connection from a client that
only writes the request and reads to the end of the head, so that the server's stack is what is
measured, with next to nothing of the client's (the TypeScript client's own round trip is the
``ping`` scenario).

``layers`` times the same request through gunicorn's gevent worker serving, in turn, a bare
WSGI callable, a one-route Flask app (bench/layer_apps.py), and Runstream (``runstream
serve``); the same with gevent's own WSGI server (gunicorn's ``gevent_pywsgi`` worker) in front
of Runstream, the alternative stack; and Runstream's app alone, called in this process with no
server and no socket. Each figure is divided by the bare app's: what is left above 1.0 is what
Flask, then Runstream, add.

Not a script: harness.py imports its scenarios; run them with ``python -m bench --only
raw_ping,layers``.
"""

from __future__ import annotations

import contextlib
import io
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from flask import Flask
from harness import Run, Scenario, ScenarioFailed
from peers import HOST, SQLITE, Server, gunicorn, runstream_server
from procstat import percentile
from results import Measure
from werkzeug.test import EnvironBuilder

from runstream.server import create_app, runtime_of

RAW_PING = "a plain request's round trip: HEAD of a stream, one keep-alive connection, raw socket"
LAYERS = "a plain request through each layer: HEAD of a stream, raw socket, p50"
BARE = "gunicorn gevent worker, bare WSGI app"
FLASK = "gunicorn gevent worker, one-route Flask app"
PYWSGI = "Runstream (SQLite), gunicorn gevent_pywsgi worker"
IN_PROCESS = "Runstream's app alone: a WSGI call in this process, no server"


def raw_ping(server: Server, count: int) -> list[float]:
    """Round trips of ``count`` HEAD requests of one stream over one keep-alive connection, in
    ms, sorted."""
    path = f"/v1/stream/bench-ping-{uuid.uuid4().hex}"
    created = httpx.put(f"{server.url}{path}", headers={"Content-Type": "application/json"})
    if created.status_code != 201:
        raise ScenarioFailed(f"ping: creating {path} on {server.name}: {created.status_code}")
    host, port = server.url.removeprefix("http://").split(":")
    request = f"HEAD {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def one() -> float:
            started = time.perf_counter()
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                received = sock.recv(65536)
                if not received:
                    raise ScenarioFailed(f"ping: {server.name} closed the connection")
                head += received
            if not head.startswith(b"HTTP/1.1 200"):
                raise ScenarioFailed(f"ping: {server.name} answered {head[:40]!r}")
            return (time.perf_counter() - started) * 1000

        for _ in range(min(200, count)):
            one()  # warm-up: the connection, the server's caches
        return sorted(one() for _ in range(count))


def ping_count(run: Run) -> int:
    return 300 if run.smoke else 5000


def raw_ping_scenario(run: Run) -> None:
    samples: dict[str, list[float]] = {}
    for round_number in range(run.rounds):
        for server in run.alternating(run.servers, round_number):
            samples.setdefault(server.name, []).extend(raw_ping(server, ping_count(run)))
    p50 = Measure(RAW_PING, "p50", "ms", False)
    p99 = Measure(RAW_PING, "p99", "ms", False)
    for name, times in samples.items():
        times.sort()
        run.results.add(p50, name, percentile(times, 0.50), f"{len(times)} requests")
        run.results.add(p99, name, percentile(times, 0.99), f"{len(times)} requests")


def in_process_head(count: int) -> list[float]:
    """Times of ``count`` HEAD requests of one stream handed straight to Runstream's WSGI app,
    in ms, sorted: what the app costs a request, with no server or socket around it."""
    with tempfile.TemporaryDirectory() as instance:
        app = create_app({"INSTANCE_PATH": instance, "AUTH": "disabled"})
        try:
            return _time_heads(app, count)
        finally:
            runtime_of(app).close()


def _time_heads(app: Flask, count: int) -> list[float]:
    client = app.test_client()
    client.put("/v1/stream/ping", headers={"Content-Type": "application/json"})
    environ = EnvironBuilder(
        path="/v1/stream/ping", method="HEAD", environ_base={"REMOTE_ADDR": HOST}
    ).get_environ()

    def one() -> float:
        started = time.perf_counter()
        statuses: list[str] = []
        body = app.wsgi_app(
            {**environ, "wsgi.input": io.BytesIO()}, lambda status, *_: statuses.append(status)
        )
        for _ in body:
            pass
        close: Callable[[], Any] | None = getattr(body, "close", None)
        if close is not None:
            close()
        if not statuses or not statuses[0].startswith("200"):
            raise ScenarioFailed(f"layers: the app answered a HEAD with {statuses}")
        return (time.perf_counter() - started) * 1000

    for _ in range(min(200, count)):
        one()
    return sorted(one() for _ in range(count))


def layers(run: Run) -> None:
    measure = Measure(LAYERS, "p50", "ms", False, baseline=BARE)
    runstream = "runstream.server:create_app()"
    settings = {"RUNSTREAM_AUTH": "disabled"}
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(tempfile.TemporaryDirectory())
        servers = [
            stack.enter_context(gunicorn(BARE, "layer_apps:bare", "gevent", run.logs)),
            stack.enter_context(gunicorn(FLASK, "layer_apps:flask_app", "gevent", run.logs)),
            stack.enter_context(runstream_server(run.logs, name=SQLITE)),
            stack.enter_context(
                gunicorn(
                    PYWSGI,
                    runstream,
                    "gevent_pywsgi",
                    run.logs,
                    RUNSTREAM_INSTANCE_PATH=instance,
                    **settings,
                )
            ),
        ]
        for round_number in range(run.rounds):
            for server in run.alternating(servers, round_number):
                samples.setdefault(server.name, []).extend(raw_ping(server, ping_count(run)))
            samples.setdefault(IN_PROCESS, []).extend(in_process_head(ping_count(run)))
    for name, times in samples.items():
        times.sort()
        run.results.add(measure, name, percentile(times, 0.50), f"{len(times)} requests")


LAYER_SCENARIOS = [Scenario("raw_ping", raw_ping_scenario), Scenario("layers", layers)]
