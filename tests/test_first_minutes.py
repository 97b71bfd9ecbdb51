"""The first five minutes of a new user: `runstream serve --demo`, and every mistake of a first
setup (a busy port, a bad database URL, a missing driver, a folder that cannot be written, a
worker without the secret key, a second server on the same instance folder) answered by one
clear line, no traceback, and a non-zero exit status.

Each case runs the real command, ``python -m runstream.server``, in a child process of its own
process group, which is killed if it outlives its timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AUTH, SECRET_KEY, start_server, stop_process_group
from flask import Flask
from reactpy.core.layout import Layout

from runstream.server import create_app, demo, runtime_of
from runstream.server.dashboard.pages import RunsPage
from runstream.server.db import engine as db_engine
from runstream.server.db.engine import DatabaseUnavailable, make_engine, parse_database_url

TESTS = Path(__file__).resolve().parent
# A command that fails must fail at once: well within this (Python starts in about a second).
PROMPTLY = 10.0
# The demo run must still be writing this long after it was announced.
DEMO_WATCHED_FOR = 15.0
UNREACHABLE_POSTGRES = "postgresql://nobody@127.0.0.1:1/x"


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without Runstream's own settings, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNSTREAM_")}
    env.update(settings)
    return env


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float


def run_command(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 20
) -> Outcome:
    """Run ``runstream ARGS`` to its end (killing its process group past ``timeout``)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "runstream.server", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"runstream {' '.join(args)} still ran after {timeout} s") from None
    return Outcome(process.returncode, output.decode(), time.monotonic() - started)


def assert_one_clear_line(outcome: Outcome, *words: str) -> str:
    """The command failed at once with one line that says ``words``, and no traceback."""
    assert outcome.returncode != 0, outcome.output
    assert "Traceback" not in outcome.output, outcome.output
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1, outcome.output
    for word in words:
        assert word in lines[0], outcome.output
    assert outcome.seconds < PROMPTLY, outcome
    return lines[0]


@dataclass
class Running:
    """A `runstream serve` that is running: its output, line by line, as it comes."""

    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    # When each line arrived (time.monotonic()).
    arrived: dict[str, float] = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode().rstrip("\n")
            self.arrived.setdefault(line, time.monotonic())
            self.lines.append(line)
        self.ended.set()

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line that matches ``pattern``, once it has been written."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.ended.is_set()
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if ended or time.monotonic() > deadline:
                raise AssertionError(f"no line matched {pattern!r}:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def stop(self) -> None:
        stop_process_group(self.process)


def serve(*args: str, env: dict[str, str]) -> Running:
    process = subprocess.Popen(
        [sys.executable, "-m", "runstream.server", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Running(process)


# -- the demo ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`runstream serve --demo --port 0`, started by the first test that needs it: the last test
    of this module checks its demo run, which has meanwhile streamed for a while."""
    instance = tmp_path_factory.mktemp("demo")
    server = serve(
        "--demo",
        "--port",
        "0",
        env=clean_env(RUNSTREAM_INSTANCE_PATH=str(instance), RUNSTREAM_SECRET_KEY=SECRET_KEY),
    )
    try:
        yield server
    finally:
        server.stop()


def test_port_0_banner_names_the_bound_port_and_the_instance_folder(
    demo_server: Running, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`--port 0` prints the port the system chose, once it is bound (it answers at once), and
    the banner says where the instance folder is."""
    url = demo_server.wait_for(r"Runstream is serving on (http://127\.0\.0\.1:(\d+)) ")[1]
    port = int(url.rsplit(":", 1)[1])
    assert port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # bound and listening when the banner said so
    folder = demo_server.wait_for(r"^  instance folder: (.+)$")[1]
    assert Path(folder).is_absolute()
    assert Path(folder).name.startswith("demo")
    demo_server.wait_for(r"^  secret key|^  store: ")
    assert httpx.get(f"{url}/runs", timeout=10).status_code in {200, 302}


def test_the_demo_run_lasts_about_a_minute() -> None:
    """The demo task's text and pace make a run of about a minute, in its two streams."""
    pieces = demo.tokens(demo.TEXT)
    planned = len(pieces) * demo.payload()["delay"]
    assert 50 <= planned <= 70, planned
    assert (demo.answer.id, demo.progress.id) == ("answer", "progress")


@pytest.fixture
def demo_app(tmp_path: Path) -> Iterator[Flask]:
    """The app as `runstream serve --demo` builds it, with its app context pushed."""
    app = create_app(
        {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789", "DEMO": True}
    )
    with app.app_context():
        yield app
    runtime_of(app).close()


def find(model: Any, tag: str, text: str | None = None) -> dict[str, Any] | None:
    """The first element ``tag`` in a ReactPy model (whose text starts with ``text``)."""
    if not isinstance(model, dict):
        return None
    children = model.get("children", [])
    if model.get("tagName") == tag and (
        text is None or any(isinstance(c, str) and c.startswith(text) for c in children)
    ):
        return model
    for child in children:
        if found := find(child, tag, text):
            return found
    return None


async def render_runs_page(click: bool) -> list[Any]:
    """Render the runs page; with ``click``, press "Run the demo again". Every model rendered."""
    models: list[Any] = []
    async with Layout(RunsPage()) as layout:

        async def render_forever() -> None:
            while True:
                models.append((await layout.render())["model"])

        renders = asyncio.create_task(render_forever())
        try:
            deadline = time.monotonic() + 10
            while not models:
                assert time.monotonic() < deadline, "the page never rendered"
                await asyncio.sleep(0.01)
            button = find(models[0], "button", "Run the demo again")
            if click:
                assert button is not None, models[0]
                target = button["eventHandlers"]["on_click"]["target"]
                await layout.deliver({"type": "layout-event", "target": target, "data": [{}]})
                while not any(find(model, "a", "Watch run_") for model in models):
                    assert time.monotonic() < deadline, "the page never linked to the new run"
                    await asyncio.sleep(0.01)
        finally:
            renders.cancel()
            await asyncio.gather(renders, return_exceptions=True)
    return models


def test_run_the_demo_again_triggers_a_demo_run_and_links_to_it(demo_app: Flask) -> None:
    models = asyncio.run(render_runs_page(click=True))
    link = next(found for model in models if (found := find(model, "a", "Watch run_")))
    run_id = link["attributes"]["href"].removeprefix("/runs/")
    run = runtime_of(demo_app).runs.get(run_id)
    assert run.task_id == "demo-llm"
    assert run.payload == demo.payload()
    assert run.status.value == "QUEUED"  # the demo worker of --demo claims it


def test_without_demo_the_runs_page_offers_no_demo(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789"})
    try:
        with app.app_context():
            models = asyncio.run(render_runs_page(click=False))
    finally:
        runtime_of(app).close()
    assert find(models[0], "h1", "Runs") is not None
    assert find(models[0], "button", "Run the demo again") is None


# -- the port ------------------------------------------------------------------------------------


def test_a_busy_port_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcome = run_command(
            "serve", "--port", str(port), env=clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path))
        )
    line = assert_one_clear_line(
        outcome, f"cannot listen on 127.0.0.1:{port}", "already in use", "--port"
    )
    # Gunicorn alone would retry for 5 s, logging "Connection in use" and "Retrying" each time:
    # the one line says the port was tried once.
    assert "serving on" not in outcome.output, line


# -- several worker processes ------------------------------------------------------------------


def test_several_workers_on_sqlite_are_refused_with_one_line(tmp_path: Path) -> None:
    """The embedded store has one writer and the in-process hub one process: --workers 2
    says what it needs instead of serving readers who would miss appends."""
    outcome = run_command(
        "serve",
        "--workers",
        "2",
        "--port",
        "0",
        env=clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path)),
    )
    line = assert_one_clear_line(outcome, "--workers 2", "PostgreSQL", "RUNSTREAM_DATABASE_URL")
    assert "serving on" not in outcome.output, line


# -- the database --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url::", ["is not a database URL", "sqlite:///", "postgresql://"]),
        (UNREACHABLE_POSTGRES, ["cannot open the database", "127.0.0.1:1", "refused"]),
        # postgres:// is PostgreSQL through psycopg 3, like postgresql://
        ("postgres://nobody:hunter2@127.0.0.1:1/x", ["postgresql+psycopg://nobody:***@"]),
        ("mysqlx://somewhere/db", ["mysqlx://", "SQLite", "PostgreSQL"]),
    ],
    ids=["unparseable", "unreachable-postgres", "postgres-scheme", "unknown-kind"],
)
def test_a_bad_database_url_is_one_line(tmp_path: Path, url: str, words: list[str]) -> None:
    outcome = run_command(
        "serve", "--database-url", url, env=clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path))
    )
    line = assert_one_clear_line(outcome, *words)
    assert "hunter2" not in line


def test_postgres_urls_are_postgresql_through_psycopg_3() -> None:
    for scheme in ("postgres", "postgresql"):
        url = parse_database_url(f"{scheme}://user@db.example/app")
        assert (url.get_backend_name(), url.get_driver_name()) == ("postgresql", "psycopg")
    assert parse_database_url("postgres+psycopg2://h/d").drivername == "postgresql+psycopg2"


def test_a_missing_postgresql_driver_names_the_extra(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "psycopg").mkdir(parents=True)
    (fake / "psycopg" / "__init__.py").write_text('raise ImportError("psycopg is not installed")')
    for command in (["serve"], ["db", "upgrade"]):
        outcome = run_command(
            *command,
            "--database-url",
            UNREACHABLE_POSTGRES,
            env=clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path / "instance"), PYTHONPATH=str(fake)),
        )
        assert_one_clear_line(outcome, "psycopg", "pip install 'runstream[postgres]'")


def test_an_unusable_sqlite_file_or_folder_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    a_folder = tmp_path / "a-folder"
    a_folder.mkdir()
    env = clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path / "instance"))
    under_a_file = run_command("serve", "--database-url", f"sqlite:///{a_file}/db.sqlite3", env=env)
    assert_one_clear_line(under_a_file, "cannot create the folder", str(a_file))
    is_a_folder = run_command("serve", "--database-url", f"sqlite:///{a_folder}", env=env)
    assert_one_clear_line(is_a_folder, str(a_folder), "is a folder, not a file")
    instance_is_a_file = run_command("serve", env=clean_env(RUNSTREAM_INSTANCE_PATH=str(a_file)))
    assert_one_clear_line(instance_is_a_file, "cannot use the instance folder", str(a_file))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_a_read_only_sqlite_folder_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        outcome = run_command(
            "db",
            "upgrade",
            "--database-url",
            f"sqlite:///{folder}/db.sqlite3",
            env=clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path / "instance")),
        )
    finally:
        folder.chmod(0o755)
    assert_one_clear_line(outcome, str(folder), "permission denied")


def test_make_engine_refuses_an_sqlite_file_it_may_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a user who is not root meets in a folder or file that is not theirs."""
    database = tmp_path / "db.sqlite3"
    database.touch()
    monkeypatch.setattr(db_engine.os, "access", lambda path, _mode: str(path) != str(database))
    with pytest.raises(DatabaseUnavailable, match=r"cannot write the SQLite database .*denied"):
        make_engine(f"sqlite:///{database}")
    monkeypatch.setattr(db_engine.os, "access", lambda path, _mode: str(path) != str(tmp_path))
    with pytest.raises(DatabaseUnavailable, match=r"cannot write in .*folder of the SQLite"):
        make_engine(f"sqlite:///{database}")


# -- the worker's secret key ---------------------------------------------------------------------


def test_a_worker_without_a_secret_key_stops_at_once_and_says_where_the_key_is(
    tmp_path: Path,
) -> None:
    env = clean_env(PYTHONPATH=str(TESTS))
    # The default instance folder: instance/ in the working directory.
    outcome = run_command("worker", "--tasks", "e2e_tasks", env=env, cwd=tmp_path)
    assert_one_clear_line(
        outcome, "RUNSTREAM_SECRET_KEY", str(tmp_path / "instance" / "secret_key")
    )
    elsewhere = tmp_path / "elsewhere"
    outcome = run_command(
        "worker",
        "--tasks",
        "e2e_tasks",
        env={**env, "RUNSTREAM_INSTANCE_PATH": str(elsewhere)},
        cwd=tmp_path,
    )
    assert_one_clear_line(outcome, "RUNSTREAM_SECRET_KEY", str(elsewhere / "secret_key"))
    help_text = run_command("worker", "--help", env=env).output
    assert "secret_key" in " ".join(help_text.split())


def test_a_worker_reads_the_key_file_of_the_default_instance_folder(tmp_path: Path) -> None:
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "secret_key").write_text(SECRET_KEY + "\n")
    worker = Running(
        subprocess.Popen(
            [sys.executable, "-m", "runstream.server", "worker", "--tasks", "e2e_tasks"],
            env=clean_env(PYTHONPATH=str(TESTS), RUNSTREAM_API_URL="http://127.0.0.1:1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        worker.wait_for(re.escape(f"using the secret key in {tmp_path / 'instance'}"))
        worker.wait_for(r"^worker: running ")
    finally:
        worker.stop()


# -- one server per instance folder --------------------------------------------------------------


def test_a_second_server_on_the_same_instance_folder_refuses_to_start(tmp_path: Path) -> None:
    env = clean_env(RUNSTREAM_INSTANCE_PATH=str(tmp_path), RUNSTREAM_SECRET_KEY=SECRET_KEY)
    first = start_server(tmp_path)
    try:
        second = run_command("serve", "--port", "0", env=env)
        assert_one_clear_line(
            second,
            f"another server (pid {first.process.pid}) already serves the instance folder",
            str(tmp_path),
            "RUNSTREAM_INSTANCE_PATH",
        )
        # The commands that maintain the store still run beside the server.
        assert run_command("purge", env=env).returncode == 0
        upgraded = run_command("db", "upgrade", env=env)
        assert (upgraded.returncode, "schema revision" in upgraded.output) == (0, True)
        with first.client() as client:
            assert client.get("/api/v1/runs").status_code == 200
        # A server killed outright leaves no stale lock behind.
        first.kill()
        first = start_server(tmp_path)
        with first.client() as client:
            assert client.get("/api/v1/runs").status_code == 200
    finally:
        first.stop()


# -- the demo, a while later ---------------------------------------------------------------------


def test_the_demo_run_is_still_streaming_after_15_seconds(demo_server: Running) -> None:
    """The run `serve --demo` announced still writes its answer 15 s later: there is time to
    open the dashboard and sign in. (Placed last: the other tests run meanwhile.)"""
    match = demo_server.wait_for(r"demo: watch (http://[^ ]+)/runs/(run_\w+) stream live")
    url, run_id = match[1], match[2]
    announced = demo_server.arrived[match.string]

    def answer() -> tuple[str, dict[str, Any]]:
        run = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=AUTH, timeout=10).json()
        streams = {stream["key"]: stream for stream in run["streams"]}
        assert set(streams) == {"answer", "progress"}, run
        return run["status"], streams["answer"]

    time.sleep(max(0.0, announced + DEMO_WATCHED_FOR - time.monotonic()))
    _, before = answer()
    time.sleep(2)
    status, after = answer()
    assert status == "EXECUTING"
    assert not after["closed"]
    assert after["chunk_count"] > before["chunk_count"] > 0
    assert after["chunk_count"] < len(demo.tokens(demo.TEXT))
