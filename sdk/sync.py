"""The blocking face of the SDK: the same names as the asyncio API, for code that is not async.

    from runstream.sync import streams

    piped = streams.pipe("ai-stream", tokens)       # returns at once
    for chunk in piped.stream: ...
    piped.wait_until_complete()
    for chunk in streams.read(run_id, "ai-stream"): ...

Every call runs the asyncio core on the SDK's own event loop (see ``runstream._portal``);
nothing here is a second implementation. Tasks are triggered with ``my_task.trigger_sync(...)`` and
``my_task.trigger_and_wait_sync(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from . import _portal, reading
from . import runs as async_runs
from . import streams as async_streams
from ._config import configure
from .auth import create_public_token
from .identifiers import DEFAULT_KEY
from .runs import Run
from .streams import Source, StreamWriter
from .tasks import task

T = TypeVar("T")
_MISSING: Any = async_streams._MISSING


class StreamHandle(Generic[T]):
    """What ``pipe`` and ``writer`` return: ``stream`` (a pipe's copy of its source) and
    ``wait_until_complete()``, both blocking."""

    def __init__(self, handle: async_streams.StreamHandle[T]) -> None:
        self._handle = handle

    @property
    def stream(self) -> Iterator[T]:
        return _portal.iterate(self._handle.stream)

    def wait_until_complete(self) -> None:
        _portal.run(self._handle.wait_until_complete())


class ReadStream(Generic[T]):
    """The chunks of a stream, as a blocking iterator; ``next_index`` resumes after them, and
    ``ended`` says whether the stream's end was reached."""

    def __init__(self, stream: reading.ReadStream[T]) -> None:
        self._stream = stream

    @property
    def next_index(self) -> int:
        return self._stream.next_index

    @property
    def ended(self) -> bool:
        return self._stream.ended

    def __iter__(self) -> Iterator[T]:
        return _portal.iterate(self._stream)

    def close(self) -> None:
        _portal.run(self._stream.aclose())


class _Streams:
    def pipe(
        self, first: Any, source: Any = _MISSING, /, *, target: str | None = None
    ) -> StreamHandle[Any]:
        return StreamHandle(_portal.call(lambda: async_streams.pipe(first, source, target=target)))

    def append(self, first: Any, value: Any = _MISSING, /, *, target: str | None = None) -> None:
        _portal.run(async_streams.append(first, value, target=target))

    def writer(
        self,
        key: str = DEFAULT_KEY,
        /,
        *,
        execute: Callable[[StreamWriter], Any],
        target: str | None = None,
    ) -> StreamHandle[Any]:
        return StreamHandle(
            _portal.call(lambda: async_streams.writer(key, execute=execute, target=target))
        )

    def read(
        self,
        run_id: str,
        key: str = DEFAULT_KEY,
        *,
        timeout_in_seconds: int = 60,
        start_index: int = 0,
        access_token: str | None = None,
        base_url: str | None = None,
    ) -> ReadStream[Any]:
        return ReadStream(
            _portal.run(
                async_streams.read(
                    run_id,
                    key,
                    timeout_in_seconds=timeout_in_seconds,
                    start_index=start_index,
                    access_token=access_token,
                    base_url=base_url,
                )
            )
        )

    def define(self, *, id: str, type: type[T] | None = None) -> StreamDefinition[T]:
        return StreamDefinition(id)


class StreamDefinition(Generic[T]):
    """A stream declared once, used with blocking calls."""

    def __init__(self, id: str) -> None:
        self.id = id

    def pipe(self, source: Source[T], *, target: str | None = None) -> StreamHandle[T]:
        return streams.pipe(self.id, source, target=target)

    def append(self, value: T, *, target: str | None = None) -> None:
        streams.append(self.id, value, target=target)

    def writer(
        self, *, execute: Callable[[StreamWriter], Any], target: str | None = None
    ) -> StreamHandle[T]:
        return streams.writer(self.id, execute=execute, target=target)

    def read(
        self,
        run_id: str,
        *,
        timeout_in_seconds: int = 60,
        start_index: int = 0,
        access_token: str | None = None,
    ) -> ReadStream[T]:
        return streams.read(
            run_id,
            self.id,
            timeout_in_seconds=timeout_in_seconds,
            start_index=start_index,
            access_token=access_token,
        )


class _Runs:
    def retrieve(
        self,
        run_id: str,
        *,
        access_token: str | None = None,
        base_url: str | None = None,
        after: str | None = None,
        wait_in_seconds: int = 0,
    ) -> Run:
        return _portal.run(
            async_runs.retrieve(
                run_id,
                access_token=access_token,
                base_url=base_url,
                after=after,
                wait_in_seconds=wait_in_seconds,
            )
        )

    def cancel(self, run_id: str) -> Run:
        return _portal.run(async_runs.cancel(run_id))

    def wait_until_finished(self, run_id: str) -> Run:
        return _portal.run(async_runs.wait_until_finished(run_id))


class _Auth:
    create_public_token = staticmethod(create_public_token)


streams = _Streams()
runs = _Runs()
auth = _Auth()

__all__ = ["ReadStream", "StreamHandle", "auth", "configure", "runs", "streams", "task"]
