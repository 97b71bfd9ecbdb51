"""The hub: how the readers of a stream learn, within a millisecond, what a commit added to it.

After every transaction that changes a stream (appends, closes, creates, deletes), the store
publishes a :class:`Commit` on the hub: the stream, where the commit starts and ends, the
committed messages themselves when they are small, and whether the stream is now closed. The
followers of :mod:`.follower` receive it; a follower standing exactly where the commit starts
takes its messages without reading the database, and any other follower reads the store.

The hub is a hint, never the truth: a commit that is lost, duplicated, reordered or too large
to carry costs a follower one read of the store, never a message. :class:`InProcessHub` serves
one server process; a hub that spans processes (Redis pub/sub, PostgreSQL ``LISTEN``) sends
:meth:`Commit.encode` and hands what it receives, :meth:`Commit.decode`-d, to
:meth:`Hub.deliver`.
"""

from __future__ import annotations

import json
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The most message bytes a commit carries; a larger commit is announced by position only.
MAX_CARRIED_BYTES = 64 * 1024

Listener = Callable[["Commit"], None]


@dataclass(frozen=True, eq=False)
class Commit:
    """What one committed transaction did to one stream (its ``path``).

    ``messages`` are the messages it appended, from ``first_position`` up to ``next_position``
    (the stream's tail after the commit); None when they were too large to carry, or when the
    commit is no append at all (a create, a delete): then the followers read the store.
    ``gone`` says the stream was deleted or expired. A commit ``under`` a prefix concerns every
    stream whose path starts with ``path``: each of their followers reads the store.
    """

    path: str
    first_position: int
    next_position: int
    messages: tuple[bytes, ...] | None
    closed: bool = False
    gone: bool = False
    under: bool = False
    # Encodings of the commit built by faces (a websocket frame, an SSE event), shared by every
    # reader that sends this commit: see :meth:`encoded`.
    _encodings: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def appended(
        cls, path: str, first_position: int, messages: Sequence[bytes], *, closed: bool
    ) -> Commit:
        """The commit of an append, carrying its messages unless they are too large."""
        carried = tuple(messages) if sum(map(len, messages)) <= MAX_CARRIED_BYTES else None
        return cls(path, first_position, first_position + len(messages), carried, closed)

    @classmethod
    def changed(cls, path: str, *, gone: bool = False) -> Commit:
        """A change that carries nothing (a create, a delete): every follower reads the store."""
        return cls(path, 0, 0, None, gone=gone)

    @classmethod
    def changed_under(cls, prefix: str) -> Commit:
        """A change to every stream under ``prefix`` (a run that ended, for its streams)."""
        return cls(prefix, 0, 0, None, under=True)

    def by_position(self) -> Commit:
        """This commit without its messages: its followers read them from the store."""
        return Commit(
            self.path,
            self.first_position,
            self.next_position,
            None,
            closed=self.closed,
            gone=self.gone,
            under=self.under,
        )

    def encoded(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()``, once per commit and ``name``: what every reader of the commit shares."""
        value = self._encodings.get(name)
        if value is None:
            # Two readers racing here both build the same value; either one is kept.
            value = self._encodings.setdefault(name, build())
        return value

    # -- the wire format of cross-process hubs -----------------------------------------------

    def encode(self) -> bytes:
        """A JSON header line, then each message as a 4-byte length and its bytes."""
        header = {
            "path": self.path,
            "first": self.first_position,
            "next": self.next_position,
            "count": None if self.messages is None else len(self.messages),
            "closed": self.closed,
            "gone": self.gone,
            "under": self.under,
        }
        # Paths as UTF-8, not escaped: a header then fits in 4.2 KB (paths are 1,024 characters
        # at most), which PostgreSQL's NOTIFY carries.
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        parts = [text.encode(), b"\n"]
        for message in self.messages or ():
            parts += [struct.pack(">I", len(message)), message]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Commit:
        line, _, body = data.partition(b"\n")
        header = json.loads(line)
        messages: tuple[bytes, ...] | None = None
        if header["count"] is not None:
            found = []
            offset = 0
            for _ in range(header["count"]):
                (size,) = struct.unpack_from(">I", body, offset)
                found.append(body[offset + 4 : offset + 4 + size])
                offset += 4 + size
            messages = tuple(found)
        return cls(
            header["path"],
            header["first"],
            header["next"],
            messages,
            closed=header["closed"],
            gone=header["gone"],
            under=header["under"],
        )


class Hub(ABC):
    """Hands each commit to the listeners of its stream; subclasses decide how it travels."""

    # How often a follower reads the store anyway, for a hub that may lose a commit; None for
    # a hub that loses none, whose idle followers then cost nothing at all.
    resync_interval: float | None = None

    def problem(self) -> str | None:
        """What keeps commits from reaching other processes now (one line), or None."""
        return None

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def publish(self, commit: Commit) -> None:
        """Tell every listener of ``commit.path``, in every process sharing this hub."""

    def deliver(self, commit: Commit) -> None:
        """Hand ``commit`` to this process's listeners of its stream (or streams)."""
        with self._lock:
            if commit.under:
                targets = [
                    (Commit.changed(path), tuple(listeners))
                    for path, listeners in self._listeners.items()
                    if path.startswith(commit.path)
                ]
            else:
                targets = [(commit, tuple(self._listeners.get(commit.path, ())))]
        for target, listeners in targets:
            for listener in listeners:
                listener(target)

    def add_listener(self, path: str, listener: Listener) -> None:
        with self._lock:
            self._listeners.setdefault(path, set()).add(listener)

    def remove_listener(self, path: str, listener: Listener) -> None:
        with self._lock:
            listeners = self._listeners.get(path)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners:
                del self._listeners[path]

    def listener_count(self) -> int:
        with self._lock:
            return sum(len(listeners) for listeners in self._listeners.values())

    def close(self) -> None:  # noqa: B027 - most hubs hold nothing to release
        """Release what the hub holds (connections, threads)."""


class InProcessHub(Hub):
    """The hub of a single server process: a commit is delivered directly, and never lost."""

    def publish(self, commit: Commit) -> None:
        self.deliver(commit)
