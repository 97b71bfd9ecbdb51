"""The :class:`Runtime`: everything a request needs, built once per application.

It lives in ``app.extensions["runstream"]``: the settings, the database engine, the hub that
wakes waiting readers, the store through which every chunk is written, and the runs that own
streams. Faces reach it through :func:`runtime` while they handle a request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, current_app
from sqlalchemy import Engine

from .config import Settings
from .core.hub import Hub
from .core.store import Store
from .db.engine import close_engine
from .runs.auth import Auth
from .runs.run_streams import RunStreams
from .runs.runs import Runs

EXTENSION = "runstream"


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
    _maintenance: threading.Event | None = field(default=None, init=False, repr=False)
    _maintenance_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start_maintenance(self) -> None:
        """Start the housekeeping thread (:mod:`.maintenance`), once; :meth:`close` stops it."""
        from . import maintenance

        if self._maintenance is not None:
            return  # the common case, on every request: no lock taken
        with self._maintenance_lock:
            if self._maintenance is None:
                self._maintenance = maintenance.start(self)

    def close(self) -> None:
        """Stop cleanly: housekeeping, the hub, then the database, whose SQLite WAL is
        checkpointed into the database file (:func:`~.db.engine.close_engine`). ``runstream
        serve`` calls it as its worker exits (SIGTERM, Ctrl-C)."""
        if self._maintenance is not None:
            self._maintenance.set()
        self.hub.close()
        close_engine(self.engine)


def runtime_of(app: Flask) -> Runtime:
    """The :class:`Runtime` of an application made by ``create_app``."""
    value: Runtime = app.extensions[EXTENSION]
    return value


def runtime() -> Runtime:
    """The :class:`Runtime` of the application handling the current request."""
    return runtime_of(current_app)
