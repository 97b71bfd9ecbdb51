"""A hub that spans processes: the commits of every server process sharing a database.

Several server processes (on one machine or many) serve the same streams when they share a
PostgreSQL database; a reader in one process must hear of a chunk appended in another. Each
process holds one :class:`SpanningHub`: a commit is delivered to the process's own readers at
once, as by the in-process hub, and sent, :meth:`.Commit.encode`-d, to every other process over
a broadcast service — Redis pub/sub (:mod:`.redis_hub`) or PostgreSQL's ``LISTEN/NOTIFY``
(:mod:`.postgres_hub`), each a small transport over this class. Every message starts with the
sending hub's origin id, so that a process skips the echo of its own commits, which it has
delivered already.

Such a service forgets what it cannot deliver, so this hub may lose commits: its followers also
read the store on a slow timer (:attr:`SpanningHub.resync_interval`), and whenever a commit may
have been lost for sure — the hub listens again after an outage, or commits could not be sent —
every follower reads the store once, at once. The service being down never fails an append (the
chunk is in the database already): the hub logs the outage once, reconnects with backoff, and
readers keep progressing on the timer meanwhile.

Two threads (greenlets, in the gevent-patched server) do the talking: the publisher, so that an
append never waits on the service, and the listener.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import struct
import threading
from abc import abstractmethod
from typing import ClassVar

from ..db.engine import hide_password
from .hub import Commit, Hub

log = logging.getLogger(__name__)

# How often followers read the store anyway, for the commits the service may have lost.
RESYNC_INTERVAL = 5.0
# The bytes of origin id that start every message.
ORIGIN_BYTES = 16
# Commits waiting to be sent past which new ones are dropped (the service is down or too slow);
# once sending works again, every follower reads the store instead.
MAX_UNSENT = 10_000
# Reconnection backoff, doubling from the first delay to the last. The last is short: readers
# catch up only once the hub listens again, so a long wait after an outage is felt by them all.
FIRST_RETRY = 0.1
LAST_RETRY = 1.0
# The listener checks its connection this often, and gives it up as dead after hearing nothing
# for DEAD_AFTER: a peer that vanished without closing the socket sends no error.
PING_EVERY = 5.0
DEAD_AFTER = 3 * PING_EVERY
# The longest the listener waits for a message before checking whether the hub closed.
POLL = 0.25
# The longest a connection to the service may take to open, or to answer.
SOCKET_TIMEOUT = 5.0

# Tells every listener of every process to read the store: a commit "under" every path.
EVERY_STREAM = Commit.changed_under("")


class SpanningHub(Hub):
    """The machinery shared by the transports: the outbox and its publisher thread, the listener
    thread, echo skipping, outages logged once, backoff. A transport implements :meth:`_send`,
    :meth:`_check`, :meth:`_listen` and :meth:`_close_transport`."""

    # The broadcast service, as log lines and problems name it.
    service: ClassVar[str]
    # What the transport raises when the service cannot be reached or fails.
    errors: ClassVar[tuple[type[Exception], ...]]
    # The most bytes one message may hold (origin included); a larger commit is sent by
    # position only. None: no limit beyond the hub's own (MAX_CARRIED_BYTES).
    max_message_bytes: ClassVar[int | None] = None

    def __init__(self, url: str, *, resync_interval: float = RESYNC_INTERVAL) -> None:
        """Start the threads: a subclass sets up its transport before calling this."""
        super().__init__()
        self.resync_interval = resync_interval
        self._where = hide_password(url)
        self._origin = os.urandom(ORIGIN_BYTES)
        self._closed = threading.Event()
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        # Set when a commit went unsent: every follower must read the store.
        self._lost = False
        self._down = False
        self._listening = False
        # Every attempt at the service draws a number from _attempts, and so does every change
        # of _down, which only the outcome of an attempt begun after the last change can make
        # (see _change); _changed is the last change's number.
        self._attempts = itertools.count(1)
        self._changed = 0
        self._down_lock = threading.Lock()
        # The listener's current attempt: the connection it is opening, or listening on.
        self._listen_attempt = 0
        self._threads = [
            threading.Thread(target=self._publish_loop, name="runstream-hub-publish", daemon=True),
            threading.Thread(target=self._listen_loop, name="runstream-hub-listen", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- the transport -------------------------------------------------------------------------

    @abstractmethod
    def _send(self, message: bytes) -> None:
        """Broadcast ``message`` to every hub listening (this one too)."""

    @abstractmethod
    def _check(self) -> None:
        """Return once the service answers the publisher again; raise one of :attr:`errors`
        if it does not."""

    @abstractmethod
    def _listen(self) -> None:
        """Listen until the hub closes: call :meth:`_listening_now` once every message sent from
        then on will be heard, and :meth:`_received` with each message. Raise one of
        :attr:`errors` when the connection fails or falls silent for ``DEAD_AFTER``."""

    @abstractmethod
    def _close_transport(self) -> None:
        """Release the transport's connections (its threads have stopped)."""

    # -- the hub -------------------------------------------------------------------------------

    def publish(self, commit: Commit) -> None:
        """Deliver ``commit`` here at once, and queue it for the other processes."""
        self.deliver(commit)
        if self._outbox.qsize() >= MAX_UNSENT:
            self._lost = True
            return
        message = self._origin + commit.encode()
        if self.max_message_bytes is not None and len(message) > self.max_message_bytes:
            message = self._origin + commit.by_position().encode()
        self._outbox.put(message)

    @property
    def listening(self) -> bool:
        """Whether commits sent from other processes reach this one now."""
        return self._listening

    def problem(self) -> str | None:
        if self._down:
            return (
                f"{self.service} at {self._where} does not answer: readers read the store on "
                "a timer"
            )
        return None

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT + 1)
        self._close_transport()

    # -- outages, logged once each -------------------------------------------------------------

    def _attempt(self) -> int:
        """The number of an attempt at the service about to begin: above every change made."""
        with self._down_lock:
            return next(self._attempts)

    def _change(self, down: bool, attempt: int) -> bool:
        """Set :attr:`_down` as the attempt numbered ``attempt`` found the service; False if
        that changes nothing.

        Each thread tells what an attempt found a while after the attempt found it (the longer
        on a loaded machine), and the other thread may have told the opposite meanwhile: a send
        that went through just before an outage, told after the listener logged the outage,
        would log it over, and the next failed send a second outage. So the outcome of an
        attempt begun before the last change is no news, as it may predate the change: it is
        ignored, and the thread's next attempt tells instead."""
        with self._down_lock:
            if self._down == down or attempt < self._changed:
                return False
            self._down = down
            self._changed = next(self._attempts)
            return True

    def _failed(self, error: Exception, attempt: int) -> None:
        if not self._change(True, attempt):
            return
        log.warning(
            "%s hub: lost %s (%s); readers read the store every %g s until it is back",
            self.service,
            self._where,
            error,
            self.resync_interval,
        )

    def _recovered(self, attempt: int) -> None:
        if not self._change(False, attempt):
            return
        log.warning("%s hub: %s is back", self.service, self._where)

    def _pause(self, delay: float) -> float | None:
        """Wait ``delay`` seconds before trying the service again: the next (doubled) delay, or
        None if the hub closed meanwhile."""
        if self._closed.wait(delay):
            return None
        return min(2 * delay, LAST_RETRY)

    # -- the publisher thread ------------------------------------------------------------------

    def _publish_loop(self) -> None:
        message = self._outbox.get()
        while message is not None:
            attempt = self._attempt()
            try:
                try:
                    self._send(message)
                except self.errors:
                    # Once more on a new connection: the last one may have died while idle (an
                    # outage now over, a restarted service), which is no outage of its own.
                    self._send(message)
            except self.errors as error:
                self._failed(error, attempt)
                self._lost = True
                if not self._wait_for_service():
                    return
            else:
                self._recovered(attempt)
            message = self._next_message()

    def _next_message(self) -> bytes | None:
        """The next message to send; None once the hub closes. After commits went unsent, it
        is a signal for every follower to read the store, which sees them all (they are
        committed); the commits queued meanwhile are dropped, as the reads see them."""
        if not self._lost:
            return self._outbox.get()
        self._lost = False
        while True:
            try:
                if self._outbox.get_nowait() is None:
                    return None
            except queue.Empty:
                return self._origin + EVERY_STREAM.encode()

    def _wait_for_service(self) -> bool:
        """Back off until the service answers again; False if the hub closed first."""
        delay = FIRST_RETRY
        while (next_delay := self._pause(delay)) is not None:
            attempt = self._attempt()
            try:
                self._check()
                return True
            except self.errors as error:
                # Told too: the failed send may have been no news (see _change), this is.
                self._failed(error, attempt)
                delay = next_delay
        return False

    # -- the listener thread -------------------------------------------------------------------

    def _listen_loop(self) -> None:
        delay: float | None = FIRST_RETRY
        while delay is not None and not self._closed.is_set():
            self._listening = False
            self._listen_attempt = self._attempt()
            try:
                self._listen()
            except self.errors as error:
                self._failed(error, self._listen_attempt)
            # A connection that listened starts the backoff over.
            delay = self._pause(FIRST_RETRY if self._listening else delay)
        self._listening = False

    @property
    def _closing(self) -> bool:
        return self._closed.is_set()

    def _listening_now(self) -> None:
        """Listening, so nothing more is missed: whatever was, the store has."""
        self._listening = True
        self._recovered(self._listen_attempt)
        # A new attempt from here: whatever fails now is a connection seen working after this.
        self._listen_attempt = self._attempt()
        self.deliver(EVERY_STREAM)

    def _received(self, message: bytes) -> None:
        if message[:ORIGIN_BYTES] == self._origin:
            return  # our own commit, delivered when it was published
        try:
            commit = Commit.decode(message[ORIGIN_BYTES:])
        except (ValueError, KeyError, TypeError, struct.error):
            self._ignored()
            return
        self.deliver(commit)

    def _ignored(self) -> None:
        log.warning("%s hub: ignored a message that is no commit", self.service)
