"""The hub: how a reader waiting at a stream's tail learns, within a millisecond, that it grew.

The store publishes a stream's topic (its path) after every commit that changes the stream:
appends, closes, deletes. Readers subscribe *before* they read, then wait; a publish that lands
between their read and their wait is not lost, because the subscription remembers it.

:class:`InProcessHub` serves one server process. A hub that spans processes (Redis pub/sub)
implements :meth:`Hub.publish` by broadcasting, and hands what it receives to :meth:`Hub.deliver`.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType

Listener = Callable[[], None]


class Hub(ABC):
    """Fans out "this topic changed" to listeners; subclasses decide how a publish travels."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def publish(self, topic: str) -> None:
        """Tell every subscriber of ``topic``, in every process sharing this hub, it changed."""

    def deliver(self, topic: str) -> None:
        """Wake this process's listeners of ``topic``."""
        with self._lock:
            listeners = tuple(self._listeners.get(topic, ()))
        for listener in listeners:
            listener()

    def add_listener(self, topic: str, listener: Listener) -> None:
        with self._lock:
            self._listeners.setdefault(topic, set()).add(listener)

    def remove_listener(self, topic: str, listener: Listener) -> None:
        with self._lock:
            listeners = self._listeners.get(topic)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners:
                del self._listeners[topic]

    def subscribe(self, topic: str) -> Subscription:
        return Subscription(self, topic)

    def subscribe_async(self, topic: str) -> AsyncSubscription:
        """A subscription that an asyncio task awaits; create it inside the running loop."""
        return AsyncSubscription(self, topic)

    def listener_count(self) -> int:
        with self._lock:
            return sum(len(listeners) for listeners in self._listeners.values())

    def close(self) -> None:  # noqa: B027 - most hubs hold nothing to release
        """Release what the hub holds (connections, threads)."""


class InProcessHub(Hub):
    """The hub of a single server process: a publish is delivered directly."""

    def publish(self, topic: str) -> None:
        self.deliver(topic)


class _Registration:
    """A listener registered on a hub topic until :meth:`close`; the two subscription faces
    differ only in how they wait."""

    def __init__(self, hub: Hub, topic: str, listener: Listener) -> None:
        self._hub = hub
        self._topic = topic
        self._listener = listener
        hub.add_listener(topic, listener)

    def close(self) -> None:
        self._hub.remove_listener(self._topic, self._listener)


class Subscription(_Registration):
    """A blocking reader's registration for one topic. Use it as a context manager."""

    def __init__(self, hub: Hub, topic: str) -> None:
        self._changed = threading.Event()
        super().__init__(hub, topic, self._changed.set)

    def wait(self, timeout: float) -> bool:
        """Block until the topic is published or ``timeout`` seconds pass; True if published.

        A publish that happened since the previous wait returns at once.
        """
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSubscription(_Registration):
    """An asyncio reader's registration for one topic. Use it as an async context manager.

    Publishes arrive on whatever thread committed; they are handed to the subscriber's event
    loop with ``call_soon_threadsafe``, the one safe way into a loop from another thread.
    """

    def __init__(self, hub: Hub, topic: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        super().__init__(hub, topic, self._notify)

    def _notify(self) -> None:
        self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, timeout: float) -> bool:
        """Wait until the topic is published or ``timeout`` seconds pass; True if published."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._changed.clear()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
