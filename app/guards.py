"""What the server does about slow and gone clients when it runs under gevent.

Two guards, installed by :func:`runstream.server.create_app` in a process that gevent has
patched (``runstream serve``, or gunicorn's gevent worker), and nowhere else, since both rely on
gevent's hub:

- a request's body must arrive within ``RUNSTREAM_BODY_TIMEOUT`` seconds of the request's
  start (:class:`DeadlineInput`): a client that trickles its body costs a socket for that long,
  then gets 408;
- a live reader is told when its client's socket turns readable (:class:`SocketWatch`), which
  for a client that only listens means it has gone, so its place in the live budget is back at
  once rather than at its next write.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from gevent import monkey

from .core.errors import TimedOut
from .faces.live import CLIENT_WATCH


def available() -> bool:
    """True in a process whose sockets gevent has patched: the guards work there."""
    return bool(monkey.is_module_patched("socket"))


class ConnectionGuards:
    """WSGI middleware: a deadline on each request's body, and a watch on the client's socket
    that live readers use to notice at once that their client has gone."""

    def __init__(self, app: Callable[..., Iterable[bytes]], body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"], self.body_timeout)
        client = environ.get("gunicorn.socket")
        if client is not None:
            environ[CLIENT_WATCH] = functools.partial(SocketWatch, client)
        return self.app(environ, start_response)


class DeadlineInput:
    """A request body that must arrive within ``timeout`` seconds of its request's start: a
    read still waiting then raises :class:`TimedOut`, which the faces answer with 408."""

    def __init__(self, body: Any, timeout: float) -> None:
        self._body = body
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def _in_time(self, read: Callable[[], Any]) -> Any:
        message = f"the request body did not arrive within {self._timeout:g} seconds"
        with gevent.Timeout(max(self._deadline - time.monotonic(), 0.001), TimedOut(message)):
            return read()

    def read(self, size: int | None = None) -> bytes:
        return bytes(self._in_time(lambda: self._body.read(size)))

    def readline(self, size: int | None = None) -> bytes:
        return bytes(self._in_time(lambda: self._body.readline(size)))

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(self._in_time(lambda: self._body.readlines(hint)))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class SocketWatch:
    """Tells ``readable`` (in gevent's hub) when the client's socket turns readable. A live
    reader's client sends nothing more, so a readable socket with nothing to read is one the
    client closed; :meth:`gone` looks, without taking anything from the socket."""

    def __init__(self, client: socket.socket, readable: Callable[[], None]) -> None:
        self._client = client
        self._readable = False
        self._watcher = gevent.get_hub().loop.io(client.fileno(), 1)

        def fired() -> None:
            self._watcher.stop()  # once: the socket stays readable from now on
            self._readable = True
            readable()

        self._watcher.start(fired)

    def gone(self) -> bool:
        if not self._readable:
            return False
        try:
            return not self._client.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def cancel(self) -> None:
        self._watcher.stop()
        self._watcher.close()
