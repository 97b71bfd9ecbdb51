"""Runstream: durable, resumable realtime streams for background jobs.

:func:`create_app` builds the Flask application. Everything a request needs lives in one
:class:`Runtime` stored in ``app.extensions["runstream"]``: the settings, the database engine, the
hub that wakes waiting readers, the store through which every chunk is written, and the runs
that own streams.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Engine

from . import migrations
from .auth import Auth, load_or_create_secret_key
from .config import DEFAULTS, Settings
from .db import make_engine
from .hub import Hub, InProcessHub
from .run_streams import RunStreams
from .runs import Runs
from .store import Store

# The dashboard's CSS and script, beside the packages.
STATIC_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    hub: Hub
    store: Store
    runs: Runs
    run_streams: RunStreams
    auth: Auth
    # Where the secret key is kept when it came from the instance folder (None: from settings).
    secret_key_file: str | None = None

    def close(self) -> None:
        self.hub.close()
        self.engine.dispose()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Runstream application.

    Settings come from ``RUNSTREAM_*`` environment variables, then from ``config``. The database
    schema is created or upgraded to the current version before the app is returned.
    """
    instance_path = (config or {}).get("INSTANCE_PATH") or os.environ.get("RUNSTREAM_INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_path=instance_path or None,
        instance_relative_config=True,
        static_folder=STATIC_FOLDER,
    )
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env("RUNSTREAM")
    if config:
        app.config.update(config)

    settings = Settings.from_mapping(app.config, app.instance_path)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    migrations.upgrade(engine)
    secret_key, secret_key_file = settings.secret_key, None
    if not secret_key:
        secret_key, secret_key_file, _ = load_or_create_secret_key(app.instance_path)
    hub = InProcessHub()
    store = Store(
        engine,
        hub,
        max_stream_bytes=settings.max_stream_bytes,
        max_message_bytes=settings.max_chunk_bytes,
    )
    runs = Runs(engine)
    app.extensions["runstream"] = Runtime(
        settings=settings,
        engine=engine,
        hub=hub,
        store=store,
        runs=runs,
        run_streams=RunStreams(
            store,
            runs,
            retention_seconds=settings.run_stream_retention_seconds,
            writer_timeout=settings.writer_timeout,
        ),
        auth=Auth(secret_key, disabled=settings.auth_disabled),
        secret_key_file=secret_key_file,
    )

    from . import api, dashboard, protocol, realtime

    app.register_blueprint(protocol.blueprint)
    app.register_blueprint(api.blueprint)
    realtime.init_app(app)
    dashboard.init_app(app)
    return app


def runtime() -> Runtime:
    """The :class:`Runtime` of the application handling the current request."""
    value: Runtime = current_app.extensions["runstream"]
    return value
