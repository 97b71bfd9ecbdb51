"""The follower: the one live path by which every reader follows a stream from a position on.

Every live reader — a Durable Streams long-poll or SSE response, a websocket reader of a run
stream, a hook rendered in the server — follows its stream through a :class:`Follower` (in a
thread) or an :class:`AsyncFollower` (in an event loop). Both are one implementation,
:class:`_Follow`, and differ only in how they wait and how they call the store.

A follower subscribes to the hub *before* its first read, so no commit can slip between the
read and the wait. At the tail it takes the messages that the hub delivered with each commit
when they continue exactly where the reader stands; it reads the store only on a gap: when it
starts or is behind (catch-up), when a commit was too large to carry, skipped ahead, or was
lost, and after a restart. It wakes only on news, on its caller's deadline, and — on a hub that
may lose commits — on the hub's resync timer. An idle follower of the in-process hub costs no
CPU and no database work at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .hub import Commit, Hub
from .store import ReadResult, Store

# How many undelivered commits a follower keeps; past that it forgets them and reads the store.
MAX_PENDING_COMMITS = 256


@dataclass(frozen=True, eq=False)
class Batch:
    """What a follower hands on in one step: ``messages`` from ``first_position``, and what it
    knows of the stream — its tail then, and whether it is closed."""

    first_position: int
    messages: Sequence[bytes]
    tail: int
    closed: bool
    # The commit this batch is the whole of, whose encodings every reader of it shares.
    commit: Commit | None = None

    @property
    def next_position(self) -> int:
        return self.first_position + len(self.messages)

    @property
    def up_to_date(self) -> bool:
        return self.next_position >= self.tail

    @property
    def reached_end(self) -> bool:
        """The reader has everything, and no more will ever come."""
        return self.closed and self.up_to_date

    def encoded(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()`` — the batch as a face sends it — built once for all its readers when the
        batch is a whole commit delivered by the hub."""
        return self.commit.encoded(name, build) if self.commit is not None else build()


# Reads the stream from a position (None: from its tail); raises the core's errors (NotFound,
# Gone) as the store does.
Reader = Callable[[int | None], Batch]


def batch_of(result: ReadResult) -> Batch:
    """What a read of the store says, as a follower hands it on."""
    start = result.next_position - len(result.messages)
    return Batch(start, result.messages, result.stream.next_position, result.stream.closed)


def store_reader(store: Store, path: str, *, max_bytes: int) -> Reader:
    """The reader of a stream of ``store``, ``max_bytes`` at most per read (at least one
    message, whatever its size)."""
    return lambda position: batch_of(store.read(path, position, max_bytes=max_bytes))


_READ = object()


class _Follow:
    """The state of one follower: where it stands, and the commits the hub delivered since."""

    # How the follower is woken when a commit arrives: each face of the follower has its own.
    _wake: Callable[[], None]

    def __init__(self, hub: Hub, path: str, position: int | None, read: Reader) -> None:
        self.hub = hub
        self.path = path
        self.position = position
        self._read = read
        self._lock = threading.Lock()
        self._commits: deque[Commit] = deque()
        # True when the store must be read before anything the hub delivers is believed.
        self._must_read = True
        self._ended = False
        # When the follower last knew it had all there was: see :meth:`_wait_time`.
        self._synced_at = time.monotonic()

    # -- what the hub calls, on the thread that committed ------------------------------------

    def _deliver(self, commit: Commit) -> None:
        with self._lock:
            if len(self._commits) >= MAX_PENDING_COMMITS:
                self._commits.clear()  # a reader this far behind reads the store instead
                self._must_read = True
            else:
                self._commits.append(commit)
        self._wake()

    # -- the follower's own steps ------------------------------------------------------------

    def _plan(self) -> Batch | object | None:
        """The next batch from delivered commits; ``_READ`` to read the store; None: wait."""
        with self._lock:
            if self._must_read:
                self._must_read = False
                self._commits.clear()  # the read sees everything they carried
                return _READ
            assert self.position is not None  # the first step is a read, which sets it
            while self._commits:
                commit = self._commits.popleft()
                if commit.gone or commit.messages is None or commit.first_position > self.position:
                    self._commits.clear()
                    return _READ
                if commit.next_position < self.position or (
                    commit.next_position == self.position and not commit.closed
                ):
                    continue  # already read: it committed before our last read
                skipped = self.position - commit.first_position
                # A commit that continues exactly where the follower stands: no commit before it
                # was lost, so the resync timer starts over.
                self._synced_at = time.monotonic()
                return Batch(
                    self.position,
                    commit.messages[skipped:],
                    commit.next_position,
                    commit.closed,
                    commit if skipped == 0 else None,
                )
            return None

    def _accept(self, batch: Batch) -> Batch | None:
        """Take ``batch`` in: the batch if it is news for the reader, None if it is not."""
        self.position = batch.next_position
        if not batch.up_to_date:
            with self._lock:
                self._must_read = True  # catching up: more is stored already
        if batch.messages or batch.reached_end:
            self._ended = batch.reached_end
            return batch
        return None

    def _read_now(self, position: int | None) -> Batch:
        self._synced_at = time.monotonic()
        return self._read(position)

    def _wait_time(self, deadline: float) -> float:
        """How long to wait for news before the deadline, or before the hub's resync.

        A hub that may lose commits can lose one unnoticed only when no commit follows it (a
        later one shows the gap): so a follower reads the store once it heard nothing for the
        resync interval, and a follower kept busy by the hub never does."""
        remaining = deadline - time.monotonic()
        interval = self.hub.resync_interval
        if interval is not None:
            remaining = min(remaining, self._synced_at + interval - time.monotonic())
        return max(remaining, 0.0)

    def _timed_out(self, deadline: float) -> bool:
        """After a wait without news: True if the caller's deadline passed; otherwise it was
        the hub's resync timer, and the store is read once more."""
        if time.monotonic() >= deadline:
            return True
        with self._lock:
            self._must_read = True
        return False

    @property
    def ended(self) -> bool:
        """The stream's end was handed on: no batch will follow."""
        return self._ended


class Follower(_Follow):
    """Follows a stream from a thread. Use it as a context manager: it listens on the hub
    while open. ``next(timeout)`` blocks until there is news."""

    def __init__(self, hub: Hub, path: str, position: int | None, read: Reader) -> None:
        super().__init__(hub, path, position, read)
        self._event = threading.Event()
        self._woken = False

    def _wake(self) -> None:
        self._event.set()

    def wake(self) -> None:
        """Make the current or next :meth:`next` return at once (None if there is no news):
        how a face hears of something else, such as a client that went away."""
        self._woken = True
        self._event.set()

    def __enter__(self) -> Follower:
        self.hub.add_listener(self.path, self._deliver)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.hub.remove_listener(self.path, self._deliver)

    def first(self) -> Batch:
        """The first read, from where the follower starts: a batch even when it is empty."""
        with self._lock:
            self._must_read = False
            self._commits.clear()
        batch = self._read_now(self.position)
        self._accept(batch)
        return batch

    def next(self, timeout: float) -> Batch | None:
        """The next batch with news (messages, or the stream's end); None when ``timeout``
        seconds passed without any, or when :meth:`wake` was called."""
        deadline = time.monotonic() + timeout
        while not self._ended:
            self._event.clear()
            if self._woken:
                self._woken = False
                return None
            plan = self._plan()
            if plan is _READ:
                plan = self._read_now(self.position)
            if isinstance(plan, Batch):
                news = self._accept(plan)
                if news is not None:
                    return news
                continue
            if self._event.wait(self._wait_time(deadline)):
                continue  # news from the hub, or woken by the face: the loop's top says which
            if self._timed_out(deadline):
                return None
        return None


class _AsyncListening:
    """Listens on a hub topic from an event loop, while used as an async context manager. The
    hub's commits arrive on whatever thread committed; they reach the loop through
    ``call_soon_threadsafe``, the one safe way into a loop from a thread."""

    hub: Hub
    path: str

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def _deliver(self, commit: Commit) -> None:
        self._wake()

    def _wake(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def __aenter__(self) -> Self:
        self.hub.add_listener(self.path, self._deliver)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.hub.remove_listener(self.path, self._deliver)


class AsyncFollower(_Follow, _AsyncListening):
    """Follows a stream from an event loop; create it inside the running loop. Use it as an
    async context manager."""

    def __init__(self, hub: Hub, path: str, position: int | None, read: Reader) -> None:
        _Follow.__init__(self, hub, path, position, read)
        _AsyncListening.__init__(self)

    async def next(self, timeout: float) -> Batch | None:
        """The next batch with news; None when ``timeout`` seconds passed without any."""
        deadline = time.monotonic() + timeout
        while not self._ended:
            self._event.clear()
            plan = self._plan()
            if plan is _READ:
                plan = await asyncio.to_thread(self._read_now, self.position)
            if isinstance(plan, Batch):
                news = self._accept(plan)
                if news is not None:
                    return news
                continue
            try:
                await asyncio.wait_for(self._event.wait(), self._wait_time(deadline))
                continue
            except TimeoutError:
                if self._timed_out(deadline):
                    return None
        return None


class AsyncTopicWatch(_AsyncListening):
    """Waits, in an event loop, for news on a hub topic that is no stream (such as ``runs``:
    a run changed). Use it as an async context manager."""

    def __init__(self, hub: Hub, topic: str) -> None:
        self.hub = hub
        self.path = topic
        super().__init__()

    async def wait(self, timeout: float) -> bool:
        """True when there was news since the last wait, within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()
