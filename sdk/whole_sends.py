"""Server websockets whose every send goes out whole, one at a time.

simple-websocket (under flask-sock) writes each frame with one ``socket.send``, which may write
only part of it: a socket's buffer takes what fits, and under gevent a send that would block
writes what it can and returns. The rest of the frame is then lost and the connection is broken
for good (a browser that waited for a 4.6 MB page update got nothing, a slow reader a torn
frame). Both faces that serve websockets, the run streams' and the ReactPy views', wrap their
connection's socket with :func:`send_whole` before they send anything.
"""

from __future__ import annotations

import threading
from typing import Any


class WholeSends:
    """A socket whose ``send`` writes all of its data before it returns, under a lock: the
    connection's reader (answering a ping, or a close) and its handler both send, and two
    whole sends interleaved would still tear both frames."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        # Created here, not at import: under gevent, the patched lock is a greenlet's.
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        # recv, fileno (for the reader's selector), shutdown and close are the socket's own.
        return getattr(self._sock, name)


def send_whole(ws: Any) -> None:
    """Make every send of the flask-sock websocket ``ws`` whole (see the module's docs)."""
    if not isinstance(ws.sock, WholeSends):
        ws.sock = WholeSends(ws.sock)
