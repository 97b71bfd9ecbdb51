"""Serving Runstream: gunicorn's gevent worker, from inside the ``runstream`` command.

A live reader (long-poll, SSE, websocket) waits, for as long as its client listens, for chunks
that come later. Under gevent each connection is a greenlet of a few kilobytes, and a waiting
reader is a greenlet parked on an event, costing no CPU and no thread: one process holds ten
thousand of them next to its short requests (measured in bench/connections.py; the README's
"Serving" section gives the figures and the sizing). Threads were measured as the alternative:
gunicorn's gthread worker holds a thread per live reader, about 80 KB and a share of the GIL
each, and at a few thousand readers the worker no longer answers its heartbeat.

gevent must patch the standard library before anything else is imported, so that every lock,
socket and wait in Flask, SQLAlchemy, psycopg and Runstream cooperates: :func:`run_patched`
re-executes the ``serve`` command with the patches applied first. The server runs one worker
process unless a hub spans processes (``--workers``): the embedded store and the in-process hub
belong to one process.

The command binds the listening socket itself (:func:`listen`) and hands it to gunicorn, so that
a busy port fails at once with one clear line, and ``--port 0`` knows its port before it says
where it serves. On SQLite, the command also holds :func:`lock_instance_folder` for the server's
whole life: a second server of the same instance folder refuses to start.

A clean stop (SIGTERM, Ctrl-C) closes each worker's :class:`~.runtime.Runtime` as the worker
exits, which checkpoints an SQLite WAL into the database file (``worker_exit``).

Slow clients cost a socket, not a worker: a request's line and headers must arrive within
``RUNSTREAM_HEADER_TIMEOUT`` seconds (gunicorn's keep-alive timeout, which its gevent worker
applies to every request's head), and its body within ``RUNSTREAM_BODY_TIMEOUT``
(:mod:`.guards`).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import resource
import socket
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from flask import Flask
from gevent import monkey
from gevent import socket as gevent_socket
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

if TYPE_CHECKING:
    from .runtime import Runtime

LOCK_FILE = "server.lock"
BACKLOG = 2048
# Connections the server keeps for short requests beside its live readers: appends, claims, the
# runs API, pages, and connections still sending their headers.
SHORT_REQUEST_CONNECTIONS = 1000
# Descriptors the process needs besides its connections: database files, logs, the listener.
OTHER_FILES = 64
# The first thing the re-executed ``serve`` does: patch as :func:`patch` does, before importing
# anything of Runstream (importing this module would import Flask, httpx and ssl), then run the
# command.
_PATCHED_START = (
    "from gevent import monkey; monkey.patch_all(aggressive=False); "
    "from runstream.server.cli import main; main(prog_name='runstream')"
)


class CannotServe(Exception):
    """The server cannot start; the message says why, in one line."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (``port`` 0: one the system chooses)."""
    shown = address_text(host, port)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CannotServe(f"cannot listen on {shown}: unknown host ({error.strerror})") from None
    # A name (localhost) listens on its IPv4 address, as gunicorn would; IPv6 only when asked.
    found.sort(key=lambda info: info[0] != (socket.AF_INET6 if ":" in host else socket.AF_INET))
    family, kind, proto, _, address = found[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError as error:
        listener.close()
        reasons = {
            errno.EADDRINUSE: "the address is already in use "
            "(is another server running? choose another --port)",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address "
            "(choose another --host)",
            errno.EACCES: "permission denied (choose a --port above 1023)",
        }
        reason = reasons.get(error.errno or 0, error.strerror or str(error))
        raise CannotServe(f"cannot listen on {shown}: {reason}") from None
    return listener


def address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def lock_instance_folder(instance_path: str) -> IO[str]:
    """Lock ``server.lock`` in the instance folder for as long as the returned file is open.

    The lock is ``flock``'s: the system drops it when the process ends, however it ends, so a
    killed server never leaves a stale lock behind. The file holds the pid of its holder.
    """
    path = os.path.join(instance_path, LOCK_FILE)
    try:
        os.makedirs(instance_path, exist_ok=True)
        lock = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the server's life
    except OSError as error:
        raise CannotServe(
            f"cannot use the instance folder {instance_path}: {error.strerror} "
            "(choose another RUNSTREAM_INSTANCE_PATH)"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        who = f"another server (pid {holder})" if holder.isdigit() else "another server"
        raise CannotServe(
            f"{who} already serves the instance folder {instance_path}: stop it, or give this "
            "one another RUNSTREAM_INSTANCE_PATH"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def patch() -> None:
    """Apply gevent's patches, leaving in ``select`` what gevent cannot make cooperative
    (``epoll``) instead of removing it: Runstream never waits on it, but trio, which httpx's
    transport imports when it is installed, needs it to exist at import."""
    monkey.patch_all(aggressive=False)


class ClientSocket(gevent_socket.socket):  # type: ignore[misc]
    """A client's connection whose ``sendall`` first tries one plain send.

    gevent's ``sendall`` asks the kernel for the socket's send buffer size on every call, to
    cut large data into chunks. A live reader's event is small and the buffer has room for it:
    one send writes it whole, and leaving the question out saved about 8 % of the server's CPU
    fanning a stream out to 300 SSE readers (measured).
    """

    __slots__ = ()

    def sendall(self, data: bytes | memoryview, flags: int = 0) -> None:
        sent = self.send(data, flags) if data else 0
        if sent < len(data):
            super().sendall(memoryview(data)[sent:], flags)


class Worker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, patching as :func:`patch` does: gunicorn's own patches
    aggressively, which would break that import in the demo's worker, the one user of httpx in
    the server process. Its clients' sockets are :class:`ClientSocket`."""

    sockets: list[Any]

    def patch(self) -> None:
        patch()
        # As gunicorn's worker does: its listening sockets become gevent's.
        self.sockets = [
            gevent_socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach())
            for s in self.sockets
        ]

    def handle(self, listener: Any, client: Any, address: Any) -> None:
        client.__class__ = ClientSocket  # the same object, with the send above
        super().handle(listener, client, address)


def run_patched() -> None:
    """Make sure this process runs under gevent's patches: if it does not yet, re-execute the
    same command line with the patches applied before anything is imported. Returns only in
    the patched process; the process keeps its pid, descriptors and environment."""
    if monkey.is_module_patched("socket"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # Python's objects from the system allocator, so that the memory of readers that have left
    # can go back to the system (runstream.server.memory), unless the environment says else.
    environment = {"PYTHONMALLOC": "malloc", **os.environ}
    os.execve(sys.executable, [sys.executable, "-c", _PATCHED_START, *sys.argv[1:]], environment)


def raise_open_file_limit(live_readers: int) -> str | None:
    """Raise the soft limit on open files to the hard one; a one-line warning if even that is
    below what ``live_readers`` readers and the short requests beside them need."""
    needed = live_readers + SHORT_REQUEST_CONNECTIONS + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        return (
            f"warning: the open-file limit is {wanted}, below the {needed} that "
            f"{live_readers} live readers need: raise the hard limit (ulimit -Hn) or lower "
            "RUNSTREAM_MAX_LIVE_READERS"
        )
    return None


class RunstreamServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self,
        config: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        demo_url: str | None,
        instance_lock: IO[str] | None,
    ) -> None:
        self.app_config = dict(config)
        self.options = dict(options)
        self.demo_url = demo_url
        self.instance_lock = instance_lock
        self.runtime: Runtime | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("post_fork", self.post_fork)
        self.cfg.set("worker_exit", self.worker_exit)

    def post_fork(self, _arbiter: Any, worker: Any) -> None:
        # Only the arbiter, the server's lasting process, keeps the instance folder's lock open.
        # Closing the worker's inherited copy leaves the arbiter's lock in place.
        if self.instance_lock is not None:
            self.instance_lock.close()
        # One demo for the whole server: in the first worker process gunicorn started.
        if worker.age > 1:
            self.demo_url = None

    def worker_exit(self, _arbiter: Any, _worker: Any) -> None:
        """In the worker, once it stopped serving: close its runtime, so that the database is
        left whole (an SQLite WAL checkpointed into the file), not as a crash leaves it."""
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None

    def load(self) -> Flask:
        from . import create_app, runtime_of

        app = create_app(self.app_config)
        runtime = self.runtime = runtime_of(app)
        runtime.start_maintenance()
        if self.demo_url is not None:
            from . import demo

            demo.start(self.demo_url, runtime.auth.secret_key)
        return app


def serve(
    config: Mapping[str, Any],
    *,
    listener: socket.socket,
    workers: int,
    live_readers: int,
    header_timeout: float,
    demo_url: str | None = None,
    instance_lock: IO[str] | None = None,
) -> None:
    """Serve on ``listener`` in the foreground until interrupted, with ``workers`` processes
    each holding up to ``live_readers`` live readers beside the short requests; with
    ``demo_url``, also run the demo worker (in the first worker process) and trigger a demo
    run. ``instance_lock`` is held by this process only. Call it from a process that
    :func:`run_patched` has patched."""
    RunstreamServer(
        config,
        {
            # gunicorn takes over the socket: its descriptor is detached from ``listener``.
            "bind": f"fd://{listener.detach()}",
            "workers": workers,
            "worker_class": "runstream.server.serving.Worker",
            # Past this many connections gunicorn stops accepting: room for every live reader
            # the budget admits and for the short requests beside them.
            "worker_connections": live_readers + SHORT_REQUEST_CONNECTIONS,
            # The worker's main greenlet heartbeats, so long-lived live reads do not trip this.
            "timeout": 60,
            "graceful_timeout": 3,
            # gevent's worker gives each request's line and headers this long to arrive (gunicorn
            # takes whole seconds).
            "keepalive": max(1, math.ceil(header_timeout)),
            "loglevel": "warning",
        },
        demo_url=demo_url,
        instance_lock=instance_lock,
    ).run()
