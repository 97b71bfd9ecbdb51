"""A bad day for the database, and what is left on disk: refusals, never 500s or hangs.

While another process holds SQLite's write lock (an ``sqlite3`` shell, a backup, ``runstream
purge``), a write is refused with 503 and ``Retry-After`` within a bounded time, and reads go on
meanwhile: in WAL mode readers never wait for the writer, and the server must not make them
(under gevent a writer that waited inside SQLite's busy handler stopped every greenlet). A
database that opens only for reading stops ``runstream serve`` with one line; one that turns
read-only while serving refuses writes with 503. The database files are the owner's alone, like
the secret key beside them, and a clean stop leaves no WAL behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import AUTH, ServerProcess, start_server, within
from reactpy import Layout, component, html
from reactpy.core.types import VdomDict
from sqlalchemy import Engine, create_engine, text
from wsproto.utilities import LocalProtocolError

from runstream.components.serving import VIEW_SHUTDOWN_SECONDS, View
from runstream.server import create_app, runtime_of
from runstream.server.core.errors import Busy
from runstream.server.core.hub import InProcessHub
from runstream.server.core.store import AppendRequest, CreateRequest, Store
from runstream.server.db import engine as db_engine
from runstream.server.db.engine import BUSY_TIMEOUT_SECONDS, DatabaseReadOnly, writing
from runstream.server.faces.errors import answer_for

DATABASE = "runstream.sqlite3"
STREAM = "/v1/stream/bad-day/log"
# A refusal comes within the busy timeout, plus what a request costs besides the wait.
REFUSED_WITHIN = BUSY_TIMEOUT_SECONDS + 2.0
# A read while a writer waits is answered at once: far less than the busy timeout.
READ_WITHIN = 1.0


def hold_sqlite_lock(path: Path, begin: str) -> sqlite3.Connection:
    """Another process's connection (its own file handle and locks) in a write transaction."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute(begin)  # IMMEDIATE and EXCLUSIVE take the write lock at once
    return other


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path / "instance")
    yield server
    server.stop()


def messages(client: httpx.Client) -> list[str]:
    response = client.get(STREAM, params={"offset": "-1"})
    assert response.status_code == 200, response.text
    return [part for part in response.text.split("\n") if part]


# -- the write lock, held by another process -----------------------------------------------------


@pytest.mark.parametrize("begin", ["BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"])
def test_a_locked_database_refuses_writes_with_503_in_bounded_time_and_reads_go_on(
    served: ServerProcess, begin: str
) -> None:
    """Two appends (the second queued behind the first in the server) are both refused with
    503 and Retry-After within the busy timeout; reads meanwhile answer at once; nothing of the
    refused appends is stored, and once the lock is released appends succeed again."""
    with served.client() as client:
        created = client.put(STREAM, content=b"before\n", headers={"Content-Type": "text/plain"})
        assert created.status_code == 201, created.text
        other = hold_sqlite_lock(served.instance_path / DATABASE, begin)
        answers: list[tuple[int, str, str | None, float]] = []

        def append(body: bytes) -> None:
            started = time.monotonic()
            with httpx.Client(base_url=served.url, headers=AUTH, timeout=30) as own:
                response = own.post(STREAM, content=body, headers={"Content-Type": "text/plain"})
            answers.append(
                (
                    response.status_code,
                    response.text,
                    response.headers.get("Retry-After"),
                    time.monotonic() - started,
                )
            )

        try:
            writers = [
                threading.Thread(target=append, args=(body,), daemon=True)
                for body in (b"refused-1\n", b"refused-2\n")
            ]
            for writer in writers:
                writer.start()
            time.sleep(0.5)  # both appends now wait: one for SQLite's lock, one behind it
            read_times = []
            for _ in range(3):
                started = time.monotonic()
                assert messages(client) == ["before"]
                read_times.append(time.monotonic() - started)
            for writer in writers:
                writer.join(REFUSED_WITHIN + 5)
        finally:
            other.execute("ROLLBACK")
            other.close()

        assert max(read_times) < READ_WITHIN, f"reads waited behind the write lock: {read_times}"
        assert len(answers) == 2, answers
        for status, body, retry_after, seconds in answers:
            assert status == 503, (status, body)
            assert retry_after is not None and int(retry_after) > 0
            assert "busy" in body, body
            assert seconds < REFUSED_WITHIN, answers
        assert messages(client) == ["before"]
        after = client.post(STREAM, content=b"after\n", headers={"Content-Type": "text/plain"})
        assert after.status_code == 204, after.text
        assert messages(client) == ["before", "after"]


def test_a_row_locked_elsewhere_refuses_an_append_as_busy(engine: Engine) -> None:
    """The store, on either database: while another connection holds the write lock (SQLite)
    or the stream's row (PostgreSQL, ``FOR UPDATE``), an append is refused as Busy within the
    busy timeout, never hangs, and stores nothing; reads go on."""
    store = Store(engine, InProcessHub())
    store.create("/held", CreateRequest("text/plain", messages=[b"one"]))
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        other = hold_sqlite_lock(Path(engine.url.database), "BEGIN IMMEDIATE")
        release = other.close  # closing rolls the transaction back
    else:
        holder = create_engine(engine.url).connect()
        holder.begin()
        holder.execute(text("SELECT id FROM streams WHERE path = '/held' FOR UPDATE"))
        release = holder.close
    try:
        started = time.monotonic()
        with pytest.raises(Busy, match="busy"):
            within(BUSY_TIMEOUT_SECONDS * 3, lambda: store.append("/held", AppendRequest([b"x"])))
        waited = time.monotonic() - started
        read = within(READ_WITHIN, lambda: store.read("/held", 0, max_bytes=1024))
    finally:
        release()
    assert waited < REFUSED_WITHIN, waited
    assert read.messages == [b"one"]
    assert store.read("/held", 0, max_bytes=1024).messages == [b"one"]


def test_writers_of_this_process_queue_for_a_bounded_time(tmp_path: Path) -> None:
    """The lock that queues this process's SQLite writers is waited for with the same bound:
    a writer behind one that does not finish is refused as Busy, not queued forever."""
    engine = db_engine.make_engine(f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    entered = threading.Event()
    leave = threading.Event()

    def slow_writer() -> None:
        with writing(engine):
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=slow_writer, daemon=True)
    thread.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        with pytest.raises(Busy), writing(engine, wait=0.5):
            pass
        assert time.monotonic() - started < 2
    finally:
        leave.set()
        thread.join(5)
        engine.dispose()


def test_busy_is_a_503_that_says_to_try_again() -> None:
    assert answer_for(Busy("x")).status == 503
    assert answer_for(DatabaseReadOnly("x")).status == 503


# -- a database that can only be read ------------------------------------------------------------


def migrated_database(folder: Path) -> Path:
    app = create_app({"INSTANCE_PATH": str(folder), "SECRET_KEY": "rs_sk_0123456789"})
    runtime_of(app).close()
    return folder / DATABASE


def test_serve_on_a_database_that_opens_only_for_reading_stops_with_one_line(
    tmp_path: Path,
) -> None:
    """SQLite opens a file it may not write read-only without a word (a read-only disk, an
    immutable file, a file of another user, ``mode=ro``): the server refuses to start, in one
    line that says what to fix, instead of serving 503s (or 500s) to every write."""
    database = migrated_database(tmp_path / "instance")
    url = f"sqlite:///file:{database}?mode=ro&uri=true"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNSTREAM_")}
    env["RUNSTREAM_INSTANCE_PATH"] = str(tmp_path / "instance")
    process = subprocess.Popen(
        [sys.executable, "-m", "runstream.server", "serve", "--port", "0", "--database-url", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("runstream serve started on a read-only database") from None
    text_out = output.decode()
    lines = text_out.strip().splitlines()
    assert process.returncode != 0, text_out
    assert "Traceback" not in text_out and len(lines) == 1, text_out
    assert "can only be read" in lines[0] and "writable" in lines[0], text_out


def test_a_database_that_turns_read_only_refuses_writes_with_503(tmp_path: Path) -> None:
    """A database that became read-only after the start (a disk remounted read-only, say)
    refuses an append as DatabaseReadOnly, a 503 that says why, and serves reads still."""
    database = migrated_database(tmp_path)
    store = Store(db_engine.make_engine(f"sqlite:///{database}"), InProcessHub())
    store.create("/kept", CreateRequest("text/plain", messages=[b"one"], ttl_seconds=3600))
    store.engine.dispose()
    # The same engine as make_engine builds, on a database SQLite opens only for reading.
    read_only = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    db_engine._configure_sqlite(read_only, "NORMAL")
    store = Store(read_only, InProcessHub())
    with pytest.raises(DatabaseReadOnly, match="read-only") as refused:
        store.append("/kept", AppendRequest([b"two"]))
    assert answer_for(refused.value).status == 503
    # A read of a stream with a sliding TTL, which restarts its window, still reads.
    assert store.read("/kept", 0, max_bytes=1024).messages == [b"one"]
    read_only.dispose()


# -- what is left on disk ------------------------------------------------------------------------


def test_the_database_files_are_the_owners_alone(served: ServerProcess) -> None:
    """The SQLite file and its -wal and -shm are 0600, like the secret key beside them."""
    with served.client() as client:
        created = client.put(STREAM, content=b"x\n", headers={"Content-Type": "text/plain"})
        assert created.status_code == 201
    folder = served.instance_path
    for name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm"):
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"


def wal_size(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_clean_stop_of_serve_checkpoints_the_wal(served: ServerProcess) -> None:
    """SIGTERM: the server's worker checkpoints the WAL into the database file as it exits, so
    that the file alone holds everything (a copy of it is a whole backup)."""
    with served.client() as client:
        created = client.put(STREAM, content=b"kept\n", headers={"Content-Type": "text/plain"})
        assert created.status_code == 201
        for n in range(20):
            appended = client.post(
                STREAM, content=f"{n}\n".encode(), headers={"Content-Type": "text/plain"}
            )
            assert appended.status_code == 204, appended.text
    database = served.instance_path / DATABASE
    assert wal_size(database) > 0  # the appends are in the WAL while the server runs
    served.stop()
    assert served.process.returncode is not None
    assert wal_size(database) == 0, "a clean stop left the WAL un-checkpointed"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as check:
        (count,) = check.execute("SELECT count(*) FROM chunks").fetchone()
    assert count == 21


def test_closing_the_runtime_checkpoints_the_wal(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789"})
    runtime = runtime_of(app)
    runtime.store.create("/closing", CreateRequest("text/plain", messages=[b"a", b"b"]))
    assert wal_size(tmp_path / DATABASE) > 0
    runtime.close()
    assert wal_size(tmp_path / DATABASE) == 0


# -- a view whose socket closed while it sent ----------------------------------------------------


class ClosedSocketWebsocket:
    """Stands in for simple-websocket's server once the browser has gone: the reader has closed
    the socket (a send raises ``error``), or wsproto has taken the browser's close frame (a
    send raises LocalProtocolError), before the connection was marked closed."""

    def __init__(self, error: BaseException) -> None:
        self.event = threading.Event()
        self.error = error
        self.sent = 0

    def receive(self, timeout: float | None = None) -> str | None:
        return None

    def send(self, _data: str) -> None:
        self.sent += 1
        raise self.error

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        OSError(9, "Bad file descriptor"),
        LocalProtocolError("Event TextMessage cannot be sent in state REMOTE_CLOSING."),
    ],
    ids=["EBADF", "close-frame-taken"],
)
def test_a_view_that_sends_after_its_socket_closed_ends_quietly(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """What failed the 500-pages test once: a send after the browser went away ends the view
    like a closed connection, its task cancelled, nothing raised or logged as a failure."""

    @component
    def Page() -> VdomDict:
        return html.p("hello")

    ws = ClosedSocketWebsocket(error)
    view = View(ws)
    within(VIEW_SHUTDOWN_SECONDS * 2, lambda: view.serve(Layout(Page())))
    assert ws.sent == 1
    assert view._ended.is_set()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
