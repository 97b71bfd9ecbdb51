"""Serving Runstream with gunicorn's threaded worker, from inside the ``runstream`` command.

Live reads hold a thread for as long as the client listens (long-poll, SSE, and the websockets
that come later), so the server is gunicorn's ``gthread`` worker with many threads. It runs a
single worker process: the embedded store and the in-process hub belong to one process.

The command binds the listening socket itself (:func:`listen`) and hands it to gunicorn, so that
a busy port fails at once with one clear line, and ``--port 0`` knows its port before it says
where it serves. On SQLite, the command also holds :func:`lock_instance_folder` for the server's
whole life: a second server of the same instance folder refuses to start.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Mapping
from typing import IO, Any

from flask import Flask
from gunicorn.app.base import BaseApplication

LOCK_FILE = "server.lock"
BACKLOG = 2048


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
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("post_fork", self.post_fork)

    def post_fork(self, _arbiter: Any, _worker: Any) -> None:
        # Only the arbiter, the server's lasting process, keeps the instance folder's lock open.
        # Closing the worker's inherited copy leaves the arbiter's lock in place.
        if self.instance_lock is not None:
            self.instance_lock.close()

    def load(self) -> Flask:
        from . import create_app, runtime_of

        app = create_app(self.app_config)
        runtime = runtime_of(app)
        runtime.start_maintenance()
        if self.demo_url is not None:
            from . import demo

            demo.start(self.demo_url, runtime.auth.secret_key)
        return app


def serve(
    config: Mapping[str, Any],
    *,
    listener: socket.socket,
    threads: int,
    demo_url: str | None = None,
    instance_lock: IO[str] | None = None,
) -> None:
    """Serve on ``listener`` in the foreground until interrupted; with ``demo_url``, also run the
    demo worker and trigger a demo run. ``instance_lock`` is held by this process only."""
    RunstreamServer(
        config,
        {
            # gunicorn takes over the socket: its descriptor is detached from ``listener``.
            "bind": f"fd://{listener.detach()}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            # Every live reader holds a connection: gunicorn's own default (1,000) would queue
            # the readers past it in the listen backlog, unanswered.
            "worker_connections": max(1000, threads + 64),
            # The main thread heartbeats, so long-lived live reads do not trip this.
            "timeout": 60,
            "graceful_timeout": 3,
            "keepalive": 5,
            "loglevel": "warning",
        },
        demo_url=demo_url,
        instance_lock=instance_lock,
    ).run()
