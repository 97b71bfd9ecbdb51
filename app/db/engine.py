"""Database engines: one place that knows how SQLite and PostgreSQL differ.

SQLite is the embedded default. It runs in WAL mode, so readers never block the single writer and
the writer never blocks readers. Python's sqlite3 module would otherwise open transactions lazily
(only before the first write), which lets a read-then-write transaction act on a stale read; so the
driver is put in autocommit mode and Runstream issues ``BEGIN`` itself: ``BEGIN IMMEDIATE`` for
write transactions, which takes the write lock up front, and a plain ``BEGIN`` for reads, which
gives them one consistent snapshot.

A database that is busy answers within a bounded time, never a hang or a 500. A write waits at
most :data:`BUSY_TIMEOUT_SECONDS` for the write lock (held by another writer of this process, or
by another process: ``runstream purge``, a backup, an ``sqlite3`` shell) and is then refused as
:class:`~..core.errors.Busy` (503 with ``Retry-After``); on PostgreSQL ``lock_timeout`` bounds
each wait for a row lock the same way. SQLite's own busy handler is off (``busy_timeout=0``): it
sleeps inside the C library, which under gevent stops every greenlet of the process, the readers
with it. Instead a writer retries ``BEGIN IMMEDIATE`` with short sleeps, which gevent turns into
cooperative waits, so while a writer waits every read is still served: in WAL mode readers never
wait for the write lock, and :func:`reading` takes no lock of this process either.

:func:`make_engine` checks the database before it returns: a URL that does not parse, a driver
that is not installed, a folder or file that cannot be written (or a database that opens only
for reading), or a server that does not answer raise :class:`DatabaseUnavailable`, whose message
says which, in one line. A database that turns read-only while the server runs refuses writes as
:class:`DatabaseReadOnly` (503), with the message saying so.

An SQLite file is created readable by its owner only (0600), as is the secret key beside it;
SQLite gives its ``-wal`` and ``-shm`` files the mode of the database. :func:`close_engine`
checkpoints the WAL into the database on a clean stop, so that the database is one whole file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..core.errors import Busy

log = logging.getLogger(__name__)

WRITE_OPTION = "runstream_write"
# A read whose statements need no common snapshot, which SQLite runs without a transaction
# (see reading()).
_NO_SNAPSHOT_OPTION = "runstream_no_snapshot"
# When a write transaction that is waiting for SQLite's write lock gives up (time.monotonic()).
_DEADLINE_OPTION = "runstream_write_deadline"
# How long a write waits for the database's write lock before it is refused with 503 and
# Retry-After: long enough for any transaction of Runstream's own (milliseconds), short enough
# that a client hears back well within its own timeout. (A candidate for a setting:
# RUNSTREAM_DATABASE_BUSY_TIMEOUT.)
BUSY_TIMEOUT_SECONDS = 5.0
# How long starting up (the write check, the migrations) waits for the write lock: a server
# that starts while another finishes its migrations waits for them rather than failing.
STARTUP_BUSY_TIMEOUT_SECONDS = 30.0
# The sleeps between two attempts at SQLite's write lock: short at first, since most waits are
# for a transaction of a few milliseconds.
_FIRST_RETRY_SECONDS = 0.002
_LONGEST_RETRY_SECONDS = 0.05
# How long a clean stop tries to checkpoint the WAL while a straggling reader still uses it.
CHECKPOINT_SECONDS = 2.0
_BUSY_OPTION = "runstream_busy_timeout"
# SQLite's primary result codes (an extended code's low byte): the lock is held elsewhere, and
# the database can only be read.
_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_READONLY = 8
# PostgreSQL's SQLSTATEs: lock_timeout expired, and a write in a read-only transaction.
_PG_LOCK_NOT_AVAILABLE = "55P03"
_PG_READ_ONLY = "25006"
# How long a PostgreSQL connection attempt may take, unless the URL says (connect_timeout=...).
CONNECT_TIMEOUT_SECONDS = 10
POSTGRES_EXTRA = "pip install 'runstream[postgres]'"
# How long a request waits for a free database connection before it is refused with 503.
POOL_TIMEOUT_SECONDS = 5.0

# SQLite has one writer at a time. Writers of this process queue on a lock (one per engine),
# for at most the busy timeout, rather than in SQLite's busy handler, which sleeps and retries:
# the lock hands over at once. Readers never take it.
_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


class DatabaseReadOnly(Busy):
    """The database refused a write because it can only be read (its file, folder or disk turned
    read-only, or a PostgreSQL standby): a 503, as the server cannot store anything until its
    operator makes the database writable again; the request itself was fine."""


@contextlib.contextmanager
def writing(engine: Engine, *, wait: float | None = None) -> Iterator[Connection]:
    """A write transaction: committed when the block ends, rolled back if it raises.

    It waits at most ``wait`` seconds (by default the engine's busy timeout,
    :data:`BUSY_TIMEOUT_SECONDS`) for the database's write lock, and is refused as
    :class:`Busy` past that: on SQLite for this process's other writers, then for the lock
    itself; on PostgreSQL, where rows are locked by the statements themselves (``SELECT ... FOR
    UPDATE``), for each lock (``lock_timeout``).
    """
    timeout = busy_timeout(engine) if wait is None else wait
    deadline = time.monotonic() + timeout
    with _refusals(timeout):
        if is_sqlite(engine):
            with _sqlite_write_lock(engine, timeout), connected(engine) as conn:
                conn.execution_options(**{WRITE_OPTION: True, _DEADLINE_OPTION: deadline})
                with conn.begin():
                    yield conn
        else:
            with connected(engine) as conn, conn.begin():
                if wait is not None and engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_milliseconds(wait)}")
                yield conn


@contextlib.contextmanager
def reading(engine: Engine, *, snapshot: bool = True) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot of the database.

    It takes no lock of this process and never waits for the write lock: in WAL mode SQLite's
    readers read the last commit while a writer writes.

    With ``snapshot=False`` each statement reads the last commit by itself, and SQLite runs
    them with no transaction around them, whose BEGIN and COMMIT cost as much as a small
    statement: for a read of one statement (a stream's HEAD), or of rows that never change once
    committed (a live reader's look at its stream, every long-poll request's first step)."""
    chosen = engine if snapshot or not is_sqlite(engine) else _no_snapshot_engine(engine)
    with _refusals(busy_timeout(engine)), connected(chosen) as conn, conn.begin():
        yield conn


_no_snapshot_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _no_snapshot_engine(engine: Engine) -> Engine:
    """``engine`` with the option that has SQLite run statements outside a transaction: an
    engine of its own, sharing the pool, made once (setting the option on each connection cost
    a fifth of a small read)."""
    chosen = _no_snapshot_engines.get(engine)
    if chosen is None:
        chosen = engine.execution_options(**{_NO_SNAPSHOT_OPTION: True})
        _no_snapshot_engines[engine] = chosen
    return chosen


def busy_timeout(engine: Engine) -> float:
    """How long a write on ``engine`` waits for the write lock (set by :func:`make_engine`)."""
    value = engine.get_execution_options().get(_BUSY_OPTION, BUSY_TIMEOUT_SECONDS)
    return float(value)


@contextlib.contextmanager
def _sqlite_write_lock(engine: Engine, timeout: float) -> Iterator[None]:
    """Hold the in-process lock of ``engine``'s writers, waiting at most ``timeout`` seconds."""
    with _locks_guard:
        lock = _sqlite_write_locks.setdefault(engine, threading.Lock())
    if not lock.acquire(timeout=max(timeout, 0.0)):
        raise Busy(_busy_message(timeout))
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _refusals(timeout: float) -> Iterator[None]:
    """Turn the database's "busy" and "read-only" errors into refusals (503), not 500s."""
    try:
        yield
    except (DBAPIError, sqlite3.Error) as error:
        # A wait for SQLite's write lock gives up with the driver's own error (_begin_immediate).
        kind = _error_kind(error.orig if isinstance(error, DBAPIError) else error)
        if kind == "busy":
            raise Busy(_busy_message(timeout)) from error
        if kind == "read-only":
            raise DatabaseReadOnly(
                "the database can only be read now (its file, folder or disk is read-only): "
                "nothing was stored; try again once the server's operator made it writable"
            ) from error
        raise


def _error_kind(error: BaseException | None) -> str | None:
    """Which refusal a database driver's error is: "busy", "read-only", or None (another)."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:  # no code: tell by the message, as SQLite words it
            text = str(error)
            return "busy" if "locked" in text else "read-only" if "readonly" in text else None
        if code & 0xFF in _SQLITE_BUSY_CODES:
            return "busy"
        return "read-only" if code & 0xFF == _SQLITE_READONLY else None
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate == _PG_LOCK_NOT_AVAILABLE:
        return "busy"
    return "read-only" if sqlstate == _PG_READ_ONLY else None


def _busy_message(timeout: float) -> str:
    return (
        f"the database is busy: another writer held its write lock for {timeout:g} seconds; "
        "nothing was stored, try again in a few seconds"
    )


def _milliseconds(seconds: float) -> int:
    """``seconds`` for PostgreSQL's timeouts, where 0 means no limit: at least 1 ms."""
    return max(1, round(seconds * 1000))


def close_engine(engine: Engine) -> None:
    """Close the engine's connections after a clean stop; on SQLite first checkpoint the WAL into
    the database and empty it (``wal_checkpoint(TRUNCATE)``), so that what is stored is in the
    database file alone: a copy of that file is a whole backup, and the next start replays
    nothing. A checkpoint that cannot finish (another process still reads) leaves the WAL for
    SQLite to apply later: nothing is lost either way."""
    try:
        if is_sqlite(engine) and engine.url.database not in {None, "", ":memory:"}:
            _checkpoint(engine)
    finally:
        engine.dispose()


def _checkpoint(engine: Engine) -> None:
    deadline = time.monotonic() + CHECKPOINT_SECONDS
    try:
        with engine.connect() as conn:
            while True:
                row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
                if row is None or not row[0] or time.monotonic() >= deadline:
                    return
                time.sleep(_LONGEST_RETRY_SECONDS)  # a reader or writer is still at work
    except DBAPIError as error:
        log.warning("could not checkpoint the SQLite WAL: %s", " ".join(str(error.orig).split()))


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
    busy_timeout: float = BUSY_TIMEOUT_SECONDS,
) -> Engine:
    """Create the engine for ``database_url``, creating an SQLite file's folder if needed,
    and connect once: :class:`DatabaseUnavailable` says why the database cannot be used.

    The pool holds at most ``pool_connections`` connections (by default 100 for SQLite, 50 for
    PostgreSQL; a request holds one only for a transaction, never across a wait); a request
    that finds none free within ``pool_timeout`` seconds is refused as :class:`Busy`, as is a
    write that waits ``busy_timeout`` seconds for the database's write lock."""
    url = parse_database_url(database_url)
    sqlite = url.get_backend_name() == "sqlite"
    try:
        if sqlite:
            _prepare_sqlite_file(url)
            engine = create_engine(url, **_pool(pool_connections or 100, pool_timeout))
            _configure_sqlite(engine, sqlite_synchronous)
        else:
            postgresql = url.get_backend_name() == "postgresql"
            connect_args: dict[str, Any] = {}
            if postgresql and "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
            engine = create_engine(
                url,
                **_pool(pool_connections or 50, pool_timeout),
                pool_pre_ping=True,
                connect_args=connect_args,
            )
            if postgresql:
                _configure_postgresql(engine, busy_timeout)
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
    engine.update_execution_options(**{_BUSY_OPTION: busy_timeout})
    _check_connection(engine, sqlite=sqlite)
    _check_writable(engine)
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
    _create_private(path)


def _create_private(path: str) -> None:
    """Create the SQLite file, empty (which SQLite takes for a new database), readable and
    writable by its owner only: it holds every stream, as sensitive as the secret key beside it.
    SQLite creates its -wal and -shm files with the database file's mode. An existing file
    keeps the mode its owner gave it."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise DatabaseUnavailable(
            f"cannot create the SQLite database {path}: {error.strerror}"
        ) from error
    os.close(descriptor)


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


def _check_writable(engine: Engine) -> None:
    """Refuse a database that opens only for reading: Runstream writes on every append, run
    and heartbeat, and on its own for housekeeping, so such a server could only answer 503s.

    SQLite opens a file it may not write read-only, silently (a read-only disk, file or -wal,
    an immutable file, a ``mode=ro`` URL); so the check writes, in a transaction it rolls back:
    nothing changes. PostgreSQL says whether its transactions are read-only (a standby)."""
    sqlite = is_sqlite(engine)
    if sqlite and engine.url.database in {None, "", ":memory:"}:
        return
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with writing(engine, wait=STARTUP_BUSY_TIMEOUT_SECONDS) as conn:
            if sqlite:
                version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                conn.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
            elif engine.dialect.name == "postgresql" and (
                conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
            ):
                raise DatabaseReadOnly("read-only transactions")
            conn.rollback()
    except DatabaseReadOnly as error:
        engine.dispose()
        where = (
            "make the file, its -wal and -shm files and its folder writable by this user"
            if sqlite
            else "point RUNSTREAM_DATABASE_URL at the primary, not a standby"
        )
        raise DatabaseUnavailable(
            f"the database {shown} can only be read, and Runstream writes to it: {where}"
        ) from error
    except Busy as error:
        engine.dispose()
        raise DatabaseUnavailable(
            f"the database {shown} is busy: another process held its write lock for "
            f"{STARTUP_BUSY_TIMEOUT_SECONDS:g} seconds"
        ) from error


def hide_password(text: str) -> str:
    """``text`` with the password of any URL in it masked: as it may be logged or shown."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", text)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # No busy handler: see the module's documentation; writers wait in _begin_immediate.
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get(WRITE_OPTION):
            deadline = options.get(_DEADLINE_OPTION)
            if deadline is None:
                deadline = time.monotonic() + busy_timeout(engine)
            _begin_immediate(connection.connection.driver_connection, float(deadline))
        elif not options.get(_NO_SNAPSHOT_OPTION):
            connection.exec_driver_sql("BEGIN")


def _begin_immediate(dbapi_connection: Any, deadline: float) -> None:
    """Take SQLite's write lock, retrying until ``deadline`` while another process holds it,
    with sleeps that let the rest of the process (other requests, under gevent) run; then
    :class:`Busy`."""
    delay = _FIRST_RETRY_SECONDS
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            remaining = deadline - time.monotonic()
            if _error_kind(error) != "busy" or remaining <= 0:
                raise
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _LONGEST_RETRY_SECONDS)


def _configure_postgresql(engine: Engine, timeout: float) -> None:
    """Bound every wait for a lock (a row another transaction holds ``FOR UPDATE``, a table a
    migration holds) to ``timeout``: past it the statement fails as lock_not_available, which
    :func:`writing` refuses as :class:`Busy`."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {_milliseconds(timeout)}")
        dbapi_connection.commit()
