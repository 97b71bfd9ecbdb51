"""Shared fixtures: a store on each database, and a real `runstream serve` on a free port.

Environment:

``RUNSTREAM_TEST_DATABASE_URL``
    A PostgreSQL database the tests may wipe: the ``engine`` fixture's ``postgresql`` param
    and the scale-out tests run on it (they are skipped without it).
``RUNSTREAM_TEST_REDIS_URL``
    A Redis for the tests of the Redis hub and of several server processes.
``RUNSTREAM_TEST_SERVER_BACKEND``
    What the shared ``server`` fixture (the `runstream serve` of the HTTP and SDK tests) stores
    in and fans out through. ``sqlite`` (the default): a fresh SQLite file and the in-process
    hub. ``postgres+redis``: the two databases above (the PostgreSQL schema is dropped first,
    and the server migrates it as it starts) with the Redis hub. In the latter mode only the
    tests that use ``server`` (directly, or through ``client`` and the like) run, the others
    are deselected: they run in the default pass already, and some of them (the ``engine``
    fixture's ``postgresql`` param, the scale-out tests) reset the PostgreSQL database, which
    would pull the schema out from under the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import Engine, text

from runstream.server.core.follower import Follower
from runstream.server.core.hub import InProcessHub
from runstream.server.core.store import Store
from runstream.server.db import make_engine
from runstream.server.db.migrations import upgrade
from runstream.server.db.models import Base

POSTGRES_URL = os.environ.get("RUNSTREAM_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL")
SERVER_BACKEND_VARIABLE = "RUNSTREAM_TEST_SERVER_BACKEND"
SQLITE_BACKEND = "sqlite"
POSTGRES_REDIS_BACKEND = "postgres+redis"
SERVER_BACKEND = os.environ.get(SERVER_BACKEND_VARIABLE, "").strip() or SQLITE_BACKEND
# No SDK call in the tests may take longer than this: past it, a hang fails the test.
HANG_GUARD = 60.0
T = TypeVar("T")
SECRET_KEY = "rs_sk_test-secret-key"
AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a server back end that is unknown, or that lacks the databases it runs on."""
    if SERVER_BACKEND not in (SQLITE_BACKEND, POSTGRES_REDIS_BACKEND):
        raise pytest.UsageError(
            f"{SERVER_BACKEND_VARIABLE}={SERVER_BACKEND!r}: expected "
            f"{SQLITE_BACKEND!r} (the default) or {POSTGRES_REDIS_BACKEND!r}"
        )
    if SERVER_BACKEND == POSTGRES_REDIS_BACKEND:
        missing = [
            name
            for name, value in [
                ("RUNSTREAM_TEST_DATABASE_URL", POSTGRES_URL),
                ("RUNSTREAM_TEST_REDIS_URL", REDIS_URL),
            ]
            if not value
        ]
        if missing:
            raise pytest.UsageError(
                f"{SERVER_BACKEND_VARIABLE}={POSTGRES_REDIS_BACKEND} runs the shared server on "
                f"PostgreSQL and Redis: set {' and '.join(missing)}"
            )


def pytest_report_header(config: pytest.Config) -> str:
    if SERVER_BACKEND == POSTGRES_REDIS_BACKEND:
        return (
            f"shared server: PostgreSQL + Redis hub ({SERVER_BACKEND_VARIABLE}="
            f"{POSTGRES_REDIS_BACKEND}); only the tests that use it run"
        )
    return "shared server: SQLite + in-process hub"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL + Redis server back end, keep only the tests of the shared server.

    The others ran in the default pass; and a test that resets the PostgreSQL database (the
    ``engine`` fixture's ``postgresql`` param) would drop the schema the shared server is using,
    so a test of the server that also takes that param is deselected as well."""
    if SERVER_BACKEND != POSTGRES_REDIS_BACKEND:
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        resets_postgres = callspec is not None and callspec.params.get("engine") == "postgresql"
        if "server" in getattr(item, "fixturenames", ()) and not resets_postgres:
            kept.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def reset_postgres(engine: Engine) -> None:
    """Drop Runstream's tables so that each test starts from an empty, freshly migrated schema."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database: an SQLite file, and PostgreSQL if RUNSTREAM_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    else:
        if not POSTGRES_URL:
            pytest.skip("set RUNSTREAM_TEST_DATABASE_URL to a PostgreSQL database to run this")
        engine = make_engine(POSTGRES_URL)
        reset_postgres(engine)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def hub() -> InProcessHub:
    return InProcessHub()


@pytest.fixture
def store(engine: Engine, hub: InProcessHub) -> Store:
    return Store(engine, hub)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proxy:
    """A TCP proxy to the service at ``target`` (a URL) that can be cut (its connections
    dropped, new ones refused) and restored on the same port: an outage of the service, as
    seen by whoever connects through :attr:`url` (the target URL with the proxy's port)."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 0)
        self._port = free_port()
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self._port}" if user else f"127.0.0.1:{self._port}"
        self.url = urlunsplit(parts._replace(netloc=netloc))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self._port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self._target)
            except OSError:
                return
            with self._lock:
                if listener.fileno() == -1:
                    # cut() ran since the accept, closing the listener but not this connection,
                    # which it could not see yet: it must not outlive the cut.
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in [(client, upstream), (upstream, client)]:
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class ServerProcess:
    """A `runstream serve` child process, in its own process group so it can be killed whole."""

    url: str
    process: subprocess.Popen[bytes]
    instance_path: Path

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client of this server that authenticates with the secret key."""
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=10, **options)

    def kill(self) -> None:
        """SIGKILL the server and its worker: no shutdown code runs, as in a crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process_group(self.process)


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM a child started in its own session, and SIGKILL it if it is still there after
    10 seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_server(
    instance_path: Path,
    *,
    env: dict[str, str] | None = None,
    arguments: Sequence[str] = (),
    port: int | None = None,
) -> ServerProcess:
    """Start `runstream serve` (with ``arguments``) on ``port`` (by default a free one) and wait
    until it answers."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runstream.server", "serve", "--port", str(port), *arguments],
        env={
            **os.environ,
            "RUNSTREAM_INSTANCE_PATH": str(instance_path),
            "RUNSTREAM_LONG_POLL_TIMEOUT": "1",
            "RUNSTREAM_SECRET_KEY": SECRET_KEY,
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"runstream serve exited with {process.returncode}:\n{output}")
        try:
            httpx.head(f"{url}/v1/stream/__health__", timeout=1)
            return ServerProcess(url, process, instance_path)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("runstream serve did not answer within 30 seconds")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by the HTTP tests: on a fresh SQLite file with the in-process hub, or,
    with RUNSTREAM_TEST_SERVER_BACKEND=postgres+redis, on the emptied PostgreSQL test database
    with the Redis hub (see the module's docstring)."""
    env: dict[str, str] = {}
    if SERVER_BACKEND == POSTGRES_REDIS_BACKEND:
        engine = make_engine(str(POSTGRES_URL))
        reset_postgres(engine)  # the server creates the schema afresh as it starts
        engine.dispose()
        env = {"RUNSTREAM_DATABASE_URL": str(POSTGRES_URL), "RUNSTREAM_REDIS_URL": str(REDIS_URL)}
    server = start_server(tmp_path_factory.mktemp("server"), env=env)
    yield server
    server.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def stream_url(request: pytest.FixtureRequest) -> str:
    """A stream path unique to the test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
    return f"/v1/stream/tests/{name}-{time.monotonic_ns()}"


def queued_run(server: ServerProcess, keys: Sequence[str], *, task: str = "tests") -> str:
    """A run that stays queued (no worker serves ``task``), with its streams ``keys`` created,
    so that readers over HTTP may start before the first chunk."""
    with server.client() as client:
        triggered = client.post(f"/api/v1/tasks/{task}/trigger", json={"payload": None})
        assert triggered.status_code == 201, triggered.text
        run_id: str = triggered.json()["id"]
        for key in keys:
            created = client.put(
                f"/v1/stream/runs/{run_id}/{key}", headers={"Content-Type": "application/json"}
            )
            assert created.status_code == 201, created.text
    return run_id


def end_run(server: ServerProcess, run_id: str) -> None:
    """Cancel the run: its streams end, as their writers are done, and their readers stop."""
    with server.client() as client:
        canceled = client.post(f"/api/v1/runs/{run_id}/cancel")
        assert canceled.status_code == 200, canceled.text


def arun(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of the asyncio API in a fresh event loop, guarded against hangs."""
    return asyncio.run(asyncio.wait_for(coroutine, HANG_GUARD))


def within(seconds: float, function: Callable[[], T]) -> T:
    """Call a blocking function in a daemon thread; fail instead of hanging past ``seconds``."""
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as error:
            outcome.append((False, error))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise AssertionError(f"still blocked after {seconds} seconds")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def follow_all(follow: Follower, until: int, timeout: float = 10) -> list[bytes]:
    """Every message the follower hands on until position ``until``, within ``timeout``."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while follow.position is None or follow.position < until:
        batch = follow.next(max(0.0, deadline - time.monotonic()))
        assert batch is not None, f"stalled at {follow.position} of {until}"
        seen.extend(batch.messages)
    return seen
