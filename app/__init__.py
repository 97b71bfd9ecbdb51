"""The Runstream server: a Flask application over the durable stream core.

:func:`create_app` builds it: ``gunicorn 'runstream.server:create_app()'``. The packages inside
show how it is made:

- :mod:`.core`: the stream core. The store, where every chunk is appended and read, and the
  hub, which tells waiting readers that a stream grew. It imports nothing of the rest.
- :mod:`.runs`: runs of tasks, the streams they own, and who may read or write them.
- :mod:`.faces`: thin protocol layers over the core: Durable Streams HTTP, the runs API, and
  run streams over websockets. They translate requests into core calls and core errors into
  answers, through one table.
- :mod:`.dashboard`: the runs dashboard, ReactPy pages served from Flask.
- :mod:`.db`: the database engine, the schema and its migrations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from runstream.reading import LOCAL_SOURCE

from .config import DEFAULTS, Settings, instance_path_from
from .core.hub import Commit, Hub, InProcessHub
from .core.store import Store
from .db import make_engine, migrations
from .runs.auth import Auth, load_or_create_secret_key
from .runs.reading import InProcessChunkSource
from .runs.run_streams import RunStreams
from .runs.runs import RUNS_TOPIC, Runs
from .runtime import EXTENSION, Runtime, runtime, runtime_of

__all__ = ["Runtime", "create_app", "runtime", "runtime_of"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Runstream application.

    Settings come from ``RUNSTREAM_*`` environment variables, then from ``config``. The database
    schema is created or upgraded to the current version before the app is returned.
    """
    app = Flask(
        __name__,
        instance_path=instance_path_from(config or {}, os.environ),
        instance_relative_config=True,
        static_folder=None,
    )
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env("RUNSTREAM")
    if config:
        app.config.update(config)

    settings = Settings.from_mapping(app.config, app.instance_path)
    engine = make_engine(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_connections=settings.database_pool_connections or None,
        pool_timeout=settings.database_pool_timeout,
        busy_timeout=settings.database_busy_timeout,
    )
    migrations.upgrade(engine)
    secret_key, secret_key_file = settings.secret_key, None
    if not secret_key:
        secret_key, secret_key_file, _ = load_or_create_secret_key(app.instance_path)
    hub = make_hub(settings, engine)
    store = Store(
        engine,
        hub,
        max_stream_bytes=settings.max_stream_bytes,
        max_message_bytes=settings.max_chunk_bytes,
    )
    runs = Runs(engine)
    runs.on_change(lambda _run: hub.publish(Commit.changed(RUNS_TOPIC)))
    run_streams = RunStreams(
        store,
        runs,
        retention_seconds=settings.run_stream_retention_seconds,
        writer_timeout=settings.writer_timeout,
    )
    auth = Auth(secret_key, disabled=settings.auth_disabled)
    app.extensions[EXTENSION] = Runtime(
        settings=settings,
        engine=engine,
        hub=hub,
        store=store,
        runs=runs,
        run_streams=run_streams,
        auth=auth,
        secret_key_file=secret_key_file,
    )
    # The hooks of the dashboard's pages read run streams through this, in-process.
    app.extensions[LOCAL_SOURCE] = InProcessChunkSource(
        run_streams, hub, auth, max_read_bytes=settings.max_read_bytes
    )

    from . import dashboard, faces, guards

    faces.init_app(app)
    dashboard.init_app(app)
    # Housekeeping (expiry, lost runs) starts with the first request the application serves,
    # whichever server runs it, and never in an application that only runs a command.
    app.before_request(runtime_of(app).start_maintenance)
    if guards.available():
        app.wsgi_app = guards.ConnectionGuards(  # type: ignore[method-assign]
            app.wsgi_app, settings.body_timeout
        )
    return app


def make_hub(settings: Settings, engine: Engine) -> Hub:
    """The hub the settings call for: Redis when a Redis URL is set, else PostgreSQL's
    ``LISTEN/NOTIFY`` on PostgreSQL, else (on SQLite, one process) the in-process hub.

    A hub's service being down at start is no error: the hub logs it, readers read the store on
    its timer, and it connects once the service is there.
    """
    if settings.redis_url:
        # Imported only here: redis-py is the optional [redis] extra.
        try:
            from .core.redis_hub import RedisHub
        except ModuleNotFoundError as error:
            if error.name != "redis":
                raise
            raise ValueError(
                "RUNSTREAM_REDIS_URL needs redis-py, which is not installed: "
                "pip install 'runstream[redis]'"
            ) from None
        return RedisHub(settings.redis_url)
    if engine.dialect.name == "postgresql":
        # psycopg is there: the engine uses it.
        from .core.postgres_hub import PostgresHub

        return PostgresHub(engine.url.render_as_string(hide_password=False))
    return InProcessHub()
