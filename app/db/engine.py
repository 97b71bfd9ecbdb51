"""Database engines: one place that knows how SQLite and PostgreSQL differ.

SQLite is the embedded default. It runs in WAL mode, so readers never block the single writer and
the writer never blocks readers. Python's sqlite3 module would otherwise open transactions lazily
(only before the first write), which lets a read-then-write transaction act on a stale read; so the
driver is put in autocommit mode and Runstream issues ``BEGIN`` itself: ``BEGIN IMMEDIATE`` for
write transactions, which takes the write lock up front, and a plain ``BEGIN`` for reads, which
gives them one consistent snapshot.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

WRITE_OPTION = "runstream_write"

# SQLite has one writer at a time. Writers of this process queue on a lock (one per engine)
# rather than in SQLite's busy handler, which sleeps and retries: the lock hands over at once.
_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed when the block ends, rolled back if it raises.

    On PostgreSQL, rows are locked by the statements themselves (``SELECT ... FOR UPDATE``).
    """
    lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if is_sqlite(engine):
        with _locks_guard:
            lock = _sqlite_write_locks.setdefault(engine, threading.Lock())
    with lock, engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot of the database."""
    with engine.connect() as conn, conn.begin():
        yield conn


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(database_url: str, *, sqlite_synchronous: str = "NORMAL") -> Engine:
    """Create the engine for ``database_url``, creating an SQLite file's folder if needed."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        # psycopg 3 is the supported driver; plain postgresql:// would pick psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)

    if url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_engine(url, pool_size=20, max_overflow=80)
    _configure_sqlite(engine, sqlite_synchronous)
    return engine


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
