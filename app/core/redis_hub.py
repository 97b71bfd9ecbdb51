"""The Redis hub: the commits of every server process sharing a database, over Redis pub/sub.

Several server processes (on one machine or many) serve the same streams when they share a
PostgreSQL database; a reader in one process must hear of a chunk appended in another. Each
process holds one :class:`RedisHub`: a commit is delivered to the process's own readers at
once, as by the in-process hub, and PUBLISHed, :meth:`.Commit.encode`-d, on one channel that
every process subscribes to, over one pub/sub connection per process whatever its number of
readers. Each message starts with the publishing hub's origin id, so that a process skips the
echo of its own commits, which it has delivered already.

Redis pub/sub forgets what it cannot deliver, so this hub may lose commits: its followers also
read the store on a slow timer (:attr:`RedisHub.resync_interval`), and whenever a commit may
have been lost for sure — the subscription came back after an outage, or commits could not be
published — every follower reads the store once, at once. Redis being down never fails an
append (the chunk is in the database already): the hub logs the outage once, reconnects with
backoff, and readers keep progressing on the timer meanwhile.

Two threads (greenlets, in the gevent-patched server) do the talking: the publisher, so that an
append never waits on Redis, and the subscriber.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from .hub import Commit, Hub

log = logging.getLogger(__name__)

CHANNEL = "runstream:commits"
# How often followers read the store anyway, for the commits pub/sub may have lost.
RESYNC_INTERVAL = 5.0
# The bytes of origin id that start every message.
ORIGIN_BYTES = 16
# Commits waiting to be published past which new ones are dropped (Redis is down or too slow);
# once publishing works again, every follower reads the store instead.
MAX_UNPUBLISHED = 10_000
# Reconnection backoff, doubling from the first delay to the last.
FIRST_RETRY = 0.1
LAST_RETRY = 5.0
# The subscriber pings Redis this often, and gives its connection up as dead after hearing
# nothing for DEAD_AFTER: a peer that vanished without closing the socket sends no error.
PING_EVERY = 5.0
DEAD_AFTER = 3 * PING_EVERY
# The longest the subscriber waits for a message before checking whether it should stop.
POLL = 0.25
SOCKET_TIMEOUT = 5.0

# Tells every listener of every process to read the store: a commit "under" every path.
EVERY_STREAM = Commit.changed_under("")


class RedisHub(Hub):
    """A hub shared by every process that subscribes to ``channel`` on the Redis at ``url``."""

    spans_processes = True

    def __init__(
        self,
        url: str,
        *,
        channel: str = CHANNEL,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        super().__init__()
        self.resync_interval = resync_interval
        self._channel = channel
        self._where = _without_password(url)
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # No retries inside redis-py: the hub backs off itself, and must see each failure
            # to know that a commit may be lost.
            retry=Retry(NoBackoff(), 0),
        )
        self._origin = os.urandom(ORIGIN_BYTES)
        self._closed = threading.Event()
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        # Set when a commit went unpublished: every follower must read the store.
        self._lost = False
        self._down = False
        self._subscribed = False
        self._down_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._publish_loop, name="runstream-hub-publish", daemon=True),
            threading.Thread(target=self._listen_loop, name="runstream-hub-listen", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def publish(self, commit: Commit) -> None:
        """Deliver ``commit`` here at once, and queue it for the other processes."""
        self.deliver(commit)
        if self._outbox.qsize() >= MAX_UNPUBLISHED:
            self._lost = True
        else:
            self._outbox.put(self._origin + commit.encode())

    def problem(self) -> str | None:
        if self._down:
            return f"Redis at {self._where} does not answer: readers read the store on a timer"
        return None

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT + 1)
        self._client.close()

    # -- outages, logged once each -------------------------------------------------------------

    def _failed(self, error: redis.RedisError) -> None:
        with self._down_lock:
            if self._down:
                return
            self._down = True
        log.warning(
            "Redis hub: lost %s (%s); readers read the store every %g s until it is back",
            self._where,
            error,
            self.resync_interval,
        )

    def _recovered(self) -> None:
        with self._down_lock:
            if not self._down:
                return
            self._down = False
        log.warning("Redis hub: %s is back", self._where)

    def _pause(self, delay: float) -> float | None:
        """Wait ``delay`` seconds before trying Redis again: the next (doubled) delay, or None
        if the hub closed meanwhile."""
        if self._closed.wait(delay):
            return None
        return min(2 * delay, LAST_RETRY)

    # -- the publisher thread ------------------------------------------------------------------

    def _publish_loop(self) -> None:
        message = self._outbox.get()
        while message is not None:
            try:
                self._client.publish(self._channel, message)
            except redis.RedisError as error:
                self._failed(error)
                self._lost = True
                if not self._wait_for_redis():
                    return
            else:
                self._recovered()
            message = self._next_message()

    def _next_message(self) -> bytes | None:
        """The next message to publish; None once the hub closes. After commits went
        unpublished, it is a signal for every follower to read the store, which sees them all
        (they are committed); the commits queued meanwhile are dropped, as the reads see them."""
        if not self._lost:
            return self._outbox.get()
        self._lost = False
        while True:
            try:
                if self._outbox.get_nowait() is None:
                    return None
            except queue.Empty:
                return self._origin + EVERY_STREAM.encode()

    def _wait_for_redis(self) -> bool:
        """Back off until Redis answers again; False if the hub closed first."""
        delay = FIRST_RETRY
        while (next_delay := self._pause(delay)) is not None:
            try:
                self._client.ping()
                return True
            except redis.RedisError:
                delay = next_delay
        return False

    # -- the subscriber thread -----------------------------------------------------------------

    def _listen_loop(self) -> None:
        delay: float | None = FIRST_RETRY
        while delay is not None:
            self._subscribed = False
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it so
            try:
                pubsub.subscribe(self._channel)
                self._receive(pubsub)
            except redis.RedisError as error:
                self._failed(error)
            finally:
                pubsub.close()
            # A subscription that worked starts the backoff over.
            delay = self._pause(FIRST_RETRY if self._subscribed else delay)

    def _receive(self, pubsub: PubSub) -> None:
        heard = pinged = time.monotonic()
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=POLL)
            now = time.monotonic()
            if message is not None:
                heard = now
                self._handle(message)
            elif now - heard > DEAD_AFTER:
                raise redis.ConnectionError(f"no answer for {DEAD_AFTER:g} s")
            if now - pinged >= PING_EVERY:
                pubsub.ping()
                pinged = now

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            # Subscribed, so nothing more is missed: whatever was, the store has.
            self._subscribed = True
            self._recovered()
            self.deliver(EVERY_STREAM)
        elif message["type"] == "message":
            data: bytes = message["data"]
            if data[:ORIGIN_BYTES] == self._origin:
                return  # our own commit, delivered when it was published
            try:
                commit = Commit.decode(data[ORIGIN_BYTES:])
            except (ValueError, KeyError, TypeError, struct.error):
                log.warning("Redis hub: ignored a message that is no commit on %s", self._channel)
                return
            self.deliver(commit)


def _without_password(url: str) -> str:
    """``url`` as it may be logged: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
