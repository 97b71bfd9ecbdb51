"""Reading a run stream, wherever it is read from: the SDK's websocket reader, or a Runstream
server reading its own store in-process.

:class:`ReadStream` is what every read returns: an async iterator of chunks that also tells how
far it got (``next_index``) and whether it reached the stream's end (``ended``) rather than
giving up after its timeout. :class:`ChunkSource` is what a reader is: the ReactPy hooks read
through one, so that they depend on this small interface and nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

T = TypeVar("T")

# A Flask application that reads run streams in-process (a Runstream server) keeps its
# ChunkSource in ``app.extensions[LOCAL_SOURCE]``; hooks rendered inside it read through that.
LOCAL_SOURCE = "runstream.chunk_source"


@dataclass
class ReadProgress:
    """How far a read got: the index of the chunk that comes next, and whether the stream
    ended (no chunk will ever follow)."""

    next_index: int
    ended: bool = False


class ReadStream(Generic[T]):
    """The chunks of a stream, as an async iterator. ``next_index`` is the index of the chunk
    that comes next: read again from there to resume. ``ended`` is True once the stream's end
    was reached, False while reading and after a read that timed out.

    Chunks arrive in batches, those that arrived together; :meth:`batches` hands them on so,
    for a reader that renders each batch at once.
    """

    def __init__(self, batches: AsyncIterator[list[T]], progress: ReadProgress) -> None:
        self._batches = batches
        self._progress = progress
        self._pending: deque[T] = deque()

    @property
    def next_index(self) -> int:
        return self._progress.next_index

    @property
    def ended(self) -> bool:
        return self._progress.ended

    def __aiter__(self) -> ReadStream[T]:
        return self

    async def __anext__(self) -> T:
        while not self._pending:
            self._pending.extend(await self._batches.__anext__())
        return self._pending.popleft()

    async def batches(self) -> AsyncIterator[list[T]]:
        """The chunks not yet iterated, a list per batch that arrived together."""
        if self._pending:
            yield list(self._pending)
            self._pending.clear()
        async for batch in self._batches:
            yield batch

    async def aclose(self) -> None:
        await cast(Any, self._batches).aclose()


@runtime_checkable
class WriteTimes(Protocol):
    """A source that also knows when each chunk was written (a Runstream server reading its own
    store): viewers show those times beside the chunks. Other sources do not know them."""

    async def write_times(self, run_id: str, key: str, start: int, stop: int) -> list[datetime]:
        """When each chunk from ``start`` up to ``stop`` was written."""
        ...


class ChunkSource(Protocol):
    """Reads run streams: from ``start_index`` on, what is stored and then each new chunk, until
    the stream ends or no chunk came for ``timeout_in_seconds``. An ``access_token`` given is
    checked as a request's would be (it must read the run); without one, the reader is trusted
    as the page it serves was."""

    async def read(
        self,
        run_id: str,
        key: str,
        *,
        start_index: int,
        timeout_in_seconds: int,
        access_token: str | None = None,
    ) -> ReadStream[Any]: ...
