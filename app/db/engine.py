"""Database engines: one place that knows how SQLite and PostgreSQL differ.

SQLite is the embedded default. It runs in WAL mode, so readers never block the single writer and
the writer never blocks readers. Python's sqlite3 module would otherwise open transactions lazily
(only before the first write), which lets a read-then-write transaction act on a stale read; so the
driver is put in autocommit mode and Runstream issues ``BEGIN`` itself: ``BEGIN IMMEDIATE`` for
write transactions, which takes the write lock up front, and a plain ``BEGIN`` for reads, which
gives them one consistent snapshot.

:func:`make_engine` checks the database before it returns: a URL that does not parse, a driver
that is not installed, a folder or file that cannot be written, or a server that does not answer
raise :class:`DatabaseUnavailable`, whose message says which, in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..core.errors import Busy

WRITE_OPTION = "runstream_write"
# How long a PostgreSQL connection attempt may take, unless the URL says (connect_timeout=...).
CONNECT_TIMEOUT_SECONDS = 10
POSTGRES_EXTRA = "pip install 'runstream[postgres]'"
# How long a request waits for a free database connection before it is refused with 503.
POOL_TIMEOUT_SECONDS = 5.0

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
    with lock, connected(engine) as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot of the database."""
    with connected(engine) as conn, conn.begin():
        yield conn


def connected(engine: Engine) -> Connection:
    """A connection from the engine's pool; :class:`Busy` (503, never a hang) when every one
    stayed in use for the pool's timeout."""
    try:
        return engine.connect()
    except PoolTimeout:
        raise Busy(
            "every connection to the database is in use: try again in a few seconds"
        ) from None


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class DatabaseUnavailable(Exception):
    """The database of a URL cannot be used; the message says why, in one line."""


def parse_database_url(database_url: str) -> URL:
    """``database_url`` parsed, with PostgreSQL's URLs (``postgresql://`` and ``postgres://``)
    pointing at psycopg 3, the supported driver (plain ``postgresql://`` would pick psycopg2)."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise DatabaseUnavailable(
            f"{hide_password(database_url)!r} is not a database URL: use one such as "
            "sqlite:////path/to/runstream.sqlite3 or postgresql://user@host/database"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in {"postgres", "postgresql"}:
        url = url.set(drivername=f"postgresql+{driver or 'psycopg'}")
    return url


def is_sqlite_url(url: str) -> bool:
    """Whether ``url`` names an SQLite database (False for one that does not parse)."""
    try:
        return parse_database_url(url).get_backend_name() == "sqlite"
    except DatabaseUnavailable:
        return False


def make_engine(
    database_url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    pool_connections: int | None = None,
    pool_timeout: float = POOL_TIMEOUT_SECONDS,
) -> Engine:
    """Create the engine for ``database_url``, creating an SQLite file's folder if needed,
    and connect once: :class:`DatabaseUnavailable` says why the database cannot be used.

    The pool holds at most ``pool_connections`` connections (by default 100 for SQLite, 50 for
    PostgreSQL; a request holds one only for a transaction, never across a wait); a request
    that finds none free within ``pool_timeout`` seconds is refused as :class:`Busy`."""
    url = parse_database_url(database_url)
    sqlite = url.get_backend_name() == "sqlite"
    try:
        if sqlite:
            _prepare_sqlite_file(url)
            engine = create_engine(url, **_pool(pool_connections or 100, pool_timeout))
            _configure_sqlite(engine, sqlite_synchronous)
        else:
            connect_args: dict[str, Any] = {}
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
            engine = create_engine(
                url,
                **_pool(pool_connections or 50, pool_timeout),
                pool_pre_ping=True,
                connect_args=connect_args,
            )
    except NoSuchModuleError:
        raise DatabaseUnavailable(
            f"{url.drivername}:// is not a database Runstream can use: use SQLite "
            "(sqlite:////path/to/runstream.sqlite3) or PostgreSQL (postgresql://user@host/db)"
        ) from None
    except ImportError as error:
        if url.get_backend_name() == "postgresql":
            raise DatabaseUnavailable(
                f"PostgreSQL needs the psycopg driver, which is not installed: {POSTGRES_EXTRA}"
            ) from error
        raise DatabaseUnavailable(
            f"the driver of {url.drivername}:// is not installed ({error})"
        ) from error
    _check_connection(engine, sqlite=sqlite)
    return engine


def _pool(connections: int, timeout: float) -> dict[str, Any]:
    """A fifth of the connections stay open between requests; the rest open as needed."""
    kept = max(1, connections // 5)
    return {"pool_size": kept, "max_overflow": connections - kept, "pool_timeout": timeout}


def _prepare_sqlite_file(url: URL) -> None:
    """Create the folder of an SQLite file; fail clearly where it cannot be written."""
    path = url.database
    if not path or path == ":memory:" or str(url.query.get("uri", "")).lower() == "true":
        return
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise DatabaseUnavailable(
            f"cannot create the folder {folder} of the SQLite database: {error.strerror}"
        ) from error
    if os.path.isdir(path):
        raise DatabaseUnavailable(f"the SQLite database {path} is a folder, not a file")
    # WAL mode writes two files beside the database: its folder must be writable too.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseUnavailable(
            f"cannot write in {folder}, the folder of the SQLite database: permission denied"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseUnavailable(f"cannot write the SQLite database {path}: permission denied")


def _check_connection(engine: Engine, *, sqlite: bool) -> None:
    if sqlite and engine.url.database in {None, "", ":memory:"}:
        return
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as error:
        engine.dispose()
        shown = engine.url.render_as_string(hide_password=True)
        reason = " ".join(str(error.orig).split())
        raise DatabaseUnavailable(f"cannot open the database {shown}: {reason}") from error


def hide_password(text: str) -> str:
    """``text`` with the password of any URL in it masked: as it may be logged or shown."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", text)


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
