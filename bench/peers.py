"""The servers a benchmark run measures, each started fresh and stopped by the run: Runstream
(``runstream serve``) and its peer over the same protocol, the Durable Streams Node reference
server (in memory), started from bench/node/.

Every server is a child process in a session of its own, stopped with its whole process group
on the way out (:func:`procstat.stop_server`), however the run ends; so that a harness killed
outright leaves none behind, Runstream gets SIGTERM when its parent dies
(:func:`procstat.die_with_parent`) and the reference server stops when its stdin closes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from procstat import die_with_parent, process_tree, stop_server

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
NODE_FOLDER = BENCH / "node"
START_SECONDS = 30.0
SQLITE = "Runstream (SQLite)"  # the names of the servers in the results
REFERENCE = "reference (Node, in memory)"
GUNICORN_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] ")  # its time and pid
PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^[\w.]+(Error|Exception)\b|handler failed")


class ServerRefused(RuntimeError):
    """The server exited at start, saying why in its log (a setting it refuses, say)."""


@dataclass
class Server:
    """A server of the run: its name in the results, its base URL, and its process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pids(self) -> list[int]:
        """The server's processes now: a gunicorn arbiter and its workers."""
        return process_tree(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(f"    | {line}" for line in text[-lines:]) or "    | (empty)"

    def log_problems(self) -> list[str]:
        """The log's errors and warnings: gunicorn's, the app's, and each exception's last line."""
        return [
            GUNICORN_PREFIX.sub("", line.strip())
            for line in self.log.read_text(errors="replace").splitlines()
            if PROBLEM.search(line)
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_serving(server: Server) -> None:
    """Return once the server answers a Durable Streams request; raise, with its log, if it
    exits or does not answer within START_SECONDS."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.process.poll() is not None:
            raise ServerRefused(f"{server.name} exited at start:\n{server.log_tail()}")
        try:
            httpx.head(f"{server.url}/v1/stream/ready", timeout=1)
            return
        except httpx.TransportError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{server.name} does not answer:\n{server.log_tail()}"
                ) from error
            time.sleep(0.05)


@contextlib.contextmanager
def runstream_server(
    logs: Path,
    *,
    name: str = SQLITE,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Iterator[Server]:
    """``runstream serve`` on a fresh instance folder (SQLite unless ``env`` says otherwise),
    authentication off (loopback only), with ``workers`` processes; ``env`` gives settings
    (RUNSTREAM_DATABASE_URL and RUNSTREAM_REDIS_URL for another store and hub, say). The outer
    environment's RUNSTREAM_* settings stay out: a Redis URL or a database left there would
    change what is measured without saying so."""
    outer = {key: value for key, value in os.environ.items() if not key.startswith("RUNSTREAM_")}
    with tempfile.TemporaryDirectory() as instance:
        port = free_port()
        command = [
            *(sys.executable, "-m", "runstream.server", "serve"),
            *("--port", str(port), "--workers", str(workers)),
        ]
        settings = {"RUNSTREAM_INSTANCE_PATH": instance, "RUNSTREAM_AUTH": "disabled"}
        log = logs / f"runstream-{port}.log"
        with python_server(name, port, command, log, outer | settings | dict(env or {})) as server:
            yield server


@contextlib.contextmanager
def python_server(
    name: str, port: int, command: list[str], log: Path, env: Mapping[str, str]
) -> Iterator[Server]:
    """A server of this Python's started with ``command`` in a session of its own, its output
    in ``log``, dying with the benchmark (:func:`procstat.die_with_parent`); once it answers,
    the server, stopped with its process group on the way out."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = Server(name, f"http://{HOST}:{port}", process, log)
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop_server(process)


def node_ready() -> str | None:
    """Why the Node peers cannot run, or None: Node and npm present, bench/node installed
    (``npm ci`` there, from its lock file, on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js and npm are not installed"
    if not (NODE_FOLDER / "node_modules").is_dir():
        installed = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_FOLDER,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode != 0:
            return f"npm ci in {NODE_FOLDER} failed:\n{installed.stderr[-2000:]}"
    return None


@contextlib.contextmanager
def reference_server(logs: Path) -> Iterator[Server]:
    """The Durable Streams Node reference server, in memory, on a free port."""
    port = free_port()
    log = logs / f"reference-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["node", "reference_server.mjs", "--host", HOST, "--port", str(port)],
            cwd=NODE_FOLDER,
            stdin=subprocess.PIPE,  # its end closes with this process: the server stops then
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(REFERENCE, f"http://{HOST}:{port}", process, log)
    try:
        wait_until_serving(server)
        yield server
    finally:
        if process.stdin is not None:
            process.stdin.close()
        stop_server(process)


@contextlib.contextmanager
def gunicorn(name: str, app: str, worker: str, logs: Path, **env: str) -> Iterator[Server]:
    """gunicorn with one ``worker`` process serving ``app`` (a module:callable of bench/, or
    Runstream's factory), on a free port, stopped with its process group."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "gunicorn", "--chdir", str(BENCH)),
        *("-k", worker, "-w", "1", "-b", f"{HOST}:{port}", "--log-level", "warning"),
        app,
    ]
    with python_server(
        name, port, command, logs / f"gunicorn-{port}.log", {**os.environ, **env}
    ) as server:
        yield server
