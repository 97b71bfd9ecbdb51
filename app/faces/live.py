"""Live readers: the budget that bounds them, and how one learns that its client has gone.

A live reader (a long-poll while it waits, an SSE response, a websocket reader) holds a
connection for as long as its client listens, at almost no cost while nothing is written. The
budget bounds how many one server process holds at once (``RUNSTREAM_MAX_LIVE_READERS``): past
it, a new live reader is refused at once (HTTP 503 with ``Retry-After``, websocket close
1013) rather than queued, so that short requests (appends, claims, the runs API, pages) always
find the server able to answer.

A reader whose client has gone must give its place back within moments, not at its next write.
The serving layer offers, in the WSGI environ under :data:`CLIENT_WATCH`, a way to be told when
the client's socket turns readable; for a live response the client sends nothing more, so a
readable socket with nothing to read means the client closed it. Without a serving layer that
offers it (Flask's development server, the test client), a gone client is noticed at the next
keep-alive write instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from flask import Flask, current_app, request

from ..core.errors import Busy
from ..memory import return_freed_memory
from ..runtime import runtime_of

EXTENSION = "runstream.live"
# The WSGI environ key of the serving layer's :class:`WatchClient`.
CLIENT_WATCH = "runstream.watch_client"
# What a refused reader is told to wait before it tries again, in seconds.
RETRY_AFTER_SECONDS = 2
# How many readers leaving (and at least half of those there were) make a crowd whose memory
# is worth handing back to the system, and how long after them the server does it.
CROWD = 100
TRIM_DELAY_SECONDS = 1.0


class ServerBusy(Busy):
    """The server holds as many live readers as it may; retrying shortly can succeed."""


class ClientWatch(Protocol):
    def gone(self) -> bool:
        """True once the client has closed its connection."""

    def cancel(self) -> None:
        """Stop watching; the connection is no longer followed."""


class WatchClient(Protocol):
    def __call__(self, readable: Callable[[], None]) -> ClientWatch:
        """Call ``readable`` (from any thread) when the client's socket turns readable."""


class LiveBudget:
    """How many live readers this process holds, and how many it may."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held = 0
        # The most held since memory was last given back (see :meth:`give_back`).
        self._peak = 0
        self._trim_pending = False
        self._lock = threading.Lock()

    def take(self) -> None:
        """Take a place, or raise :class:`ServerBusy` at once if none is left."""
        with self._lock:
            if self._held >= self.size:
                raise ServerBusy(
                    f"this server already holds its {self.size} live readers: try again in "
                    f"{RETRY_AFTER_SECONDS} seconds, or read without waiting (no live=)"
                )
            self._held += 1
            self._peak = max(self._peak, self._held)

    def give_back(self) -> None:
        """Give a place back. Once a crowd of readers has left (at least :data:`CROWD`, and
        half of the most there were), their memory is handed back to the system a moment
        later, when their connections have ended too."""
        with self._lock:
            self._held -= 1
            crowd_left = self._peak - self._held >= CROWD and self._held <= self._peak // 2
            if crowd_left:
                self._peak = self._held
            schedule = crowd_left and not self._trim_pending
            self._trim_pending = self._trim_pending or schedule
        if schedule:
            threading.Timer(TRIM_DELAY_SECONDS, self._return_memory, (self._held,)).start()

    def _return_memory(self, held_then: int) -> None:
        with self._lock:
            self._trim_pending = False
            # Long-poll readers leave with every answer and come back at once: a crowd that is
            # back holds its memory again, and collecting it every second cost them 3 % of
            # the server's CPU.
            back = self._held - held_then >= CROWD
        if not back:
            return_freed_memory()


class LiveReader:
    """One admitted live reader: its place in the budget and the watch on its client.

    ``wake`` is called when the client's socket turns readable (the follower's ``wake``), so
    that the reader looks at :attr:`client_gone` at once instead of at its next keep-alive;
    None for a connection that notices its client's leaving itself (a websocket).
    :meth:`close` may be called more than once; only the first gives the place back.
    """

    def __init__(self, budget: LiveBudget, wake: Callable[[], None] | None) -> None:
        budget.take()
        self._budget: LiveBudget | None = budget
        watch_client: WatchClient | None = request.environ.get(CLIENT_WATCH)
        self._watch = watch_client(wake) if watch_client and wake else None

    @property
    def client_gone(self) -> bool:
        return self._watch is not None and self._watch.gone()

    def close(self) -> None:
        budget, self._budget = self._budget, None
        if budget is None:
            return
        if self._watch is not None:
            self._watch.cancel()
        budget.give_back()


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = LiveBudget(runtime_of(app).settings.max_live_readers)


def admit(wake: Callable[[], None] | None) -> LiveReader:
    """A place for a new live reader of the current request, or :class:`ServerBusy`."""
    budget: LiveBudget = current_app.extensions[EXTENSION]
    return LiveReader(budget, wake)
