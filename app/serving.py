"""Serving Runstream with gunicorn's threaded worker, from inside the ``runstream`` command.

Live reads hold a thread for as long as the client listens (long-poll, SSE, and the websockets
that come later), so the server is gunicorn's ``gthread`` worker with many threads. It runs a
single worker process: the embedded store and the in-process hub belong to one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class RunstreamServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self, config: Mapping[str, Any], options: Mapping[str, Any], *, demo_url: str | None
    ) -> None:
        self.app_config = dict(config)
        self.options = dict(options)
        self.demo_url = demo_url
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from . import create_app, runtime_of

        app = create_app(self.app_config)
        runtime = runtime_of(app)
        runtime.start_maintenance()
        if self.demo_url is not None:
            from . import demo

            demo.start(self.demo_url, runtime.auth.secret_key)
        return app


def serve(
    config: Mapping[str, Any], *, host: str, port: int, threads: int, demo_url: str | None = None
) -> None:
    """Run the server in the foreground until it is interrupted; with ``demo_url``, also run
    the demo worker and trigger a demo run."""
    RunstreamServer(
        config,
        {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            # The main thread heartbeats, so long-lived live reads do not trip this.
            "timeout": 60,
            "graceful_timeout": 3,
            "keepalive": 5,
            "loglevel": "warning",
        },
        demo_url=demo_url,
    ).run()
