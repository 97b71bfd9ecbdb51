"""Realtime streams, for asyncio code: ``pipe``, ``read``, ``append``, ``writer`` and ``define``.

Every call that writes takes the stream key as an optional first argument (``"default"`` when
left out) and ``target=``: ``"self"`` (the default inside a task), ``"parent"``, ``"root"``, or a
run id. Chunks are JSON values; strings stay strings.

``pipe`` and ``writer`` return at once. The chunks are delivered in the background, exactly once
and in order, through lost connections; ``wait_until_complete()`` returns when every chunk is
durably stored, and raises if that could not be done. Inside a task, the run does not finish
until they have.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Generic, TypeVar, cast, overload

from ._config import ClientSettings, settings
from ._context import current_scope, resolve_target
from ._ws import ChunkWriter, read_batches
from .errors import RunstreamError
from .identifiers import DEFAULT_KEY
from .reading import ReadProgress, ReadStream

T = TypeVar("T")
MAX_TIMEOUT_IN_SECONDS = 600
_MISSING: Any = object()
_END: Any = object()

Source = Iterable[T] | AsyncIterable[T]


async def _iterate(source: Source[T]) -> AsyncIterator[T]:
    """Iterate a sync or async iterable without blocking the event loop."""
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    elif isinstance(source, list | tuple):
        for item in source:
            yield item
    else:
        # A plain generator may block (sleep, read a socket): step it in a thread.
        iterator = iter(source)
        while (item := await asyncio.to_thread(next, iterator, _END)) is not _END:
            yield item


class _Tee(Generic[T]):
    """The copy of a piped source handed back as ``stream``: every chunk, in order."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

    def put(self, item: T) -> None:
        self._items.put_nowait((False, item))

    def finish(self, error: BaseException | None) -> None:
        self._items.put_nowait((True, error))

    def __aiter__(self) -> _Tee[T]:
        return self

    async def __anext__(self) -> T:
        finished, item = await self._items.get()
        if not finished:
            return cast(T, item)
        self._items.put_nowait((True, item))  # later readers see the end too
        if item is not None:
            raise item
        raise StopAsyncIteration


class StreamHandle(Generic[T]):
    """What ``pipe`` and ``writer`` return: ``stream`` (for a pipe: a copy of the source) and
    ``wait_until_complete()``."""

    def __init__(self, delivery: asyncio.Task[None], stream: _Tee[T] | None = None) -> None:
        self._delivery = delivery
        self._stream = stream

    @property
    def stream(self) -> AsyncIterator[T]:
        if self._stream is None:
            raise RunstreamError("a writer has no stream to iterate; a pipe does")
        return self._stream

    async def wait_until_complete(self) -> None:
        """Return once every chunk is durably stored; raise if that could not be done."""
        await asyncio.shield(self._delivery)


def _split_key(first: Any, second: Any) -> tuple[str, Any]:
    """``(key, value)`` from calls written ``f(key, value)`` or ``f(value)``."""
    if second is _MISSING:
        return DEFAULT_KEY, first
    if not isinstance(first, str):
        raise TypeError(f"the stream key must be a string, not {type(first).__name__}")
    return first, second


def _track(delivery: asyncio.Task[None]) -> None:
    scope = current_scope.get()
    if scope is not None:
        scope.pending.append(delivery)


@overload
def pipe(source: Source[T], /, *, target: str | None = None) -> StreamHandle[T]: ...
@overload
def pipe(key: str, source: Source[T], /, *, target: str | None = None) -> StreamHandle[T]: ...
def pipe(first: Any, source: Any = _MISSING, /, *, target: str | None = None) -> StreamHandle[Any]:
    """Send every chunk of ``source`` (an iterable or async iterable) to a stream.

    Returns at once, without awaiting; ``.stream`` iterates the same chunks, and
    ``await .wait_until_complete()`` waits until all are stored.
    """
    key, source = _split_key(first, source)
    writer = ChunkWriter(settings(), resolve_target(target), key)
    tee: _Tee[Any] = _Tee()
    delivery = asyncio.get_running_loop().create_task(_pump(source, writer, tee))
    _track(delivery)
    return StreamHandle(delivery, tee)


async def _pump(source: Source[Any], writer: ChunkWriter, tee: _Tee[Any] | None) -> None:
    failure: BaseException | None = None
    try:
        async for chunk in _iterate(source):
            writer.write(chunk)
            if tee is not None:
                tee.put(chunk)
            if writer.failed:
                break  # the server refused the stream: close() says why, without the rest
    except Exception as error:
        failure = error
    if tee is not None:
        tee.finish(failure)
    # What the source produced before failing is still delivered, and the stream ends.
    await writer.close()
    if failure is not None:
        raise failure


@overload
async def append(value: Any, /, *, target: str | None = None) -> None: ...
@overload
async def append(key: str, value: Any, /, *, target: str | None = None) -> None: ...
async def append(first: Any, value: Any = _MISSING, /, *, target: str | None = None) -> None:
    """Append one chunk to a stream and wait until it is stored."""
    key, value = _split_key(first, value)
    writer = ChunkWriter(settings(), resolve_target(target), key)
    writer.write(value)
    await writer.close()


class StreamWriter:
    """Handed to a writer's ``execute``: ``write(chunk)`` one chunk, ``merge(source)`` a whole
    iterable or async iterable. Both may be called from any thread."""

    def __init__(self, writer: ChunkWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._merges: list[asyncio.Task[None]] = []

    def write(self, chunk: Any) -> None:
        self._in_loop(lambda: self._writer.write(chunk))

    def merge(self, source: Source[Any]) -> None:
        self._in_loop(lambda: self._merges.append(self._loop.create_task(self._merge(source))))

    async def _merge(self, source: Source[Any]) -> None:
        async for chunk in _iterate(source):
            self._writer.write(chunk)

    def _in_loop(self, action: Callable[[], object]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            action()
        else:
            asyncio.run_coroutine_threadsafe(_call(action), self._loop).result()

    async def _finish(self) -> None:
        while self._merges:  # a merged source may itself be merging
            merges, self._merges = self._merges, []
            await asyncio.gather(*merges)


async def _call(action: Callable[[], object]) -> None:
    action()


@overload
def writer(
    *, execute: Callable[[StreamWriter], Any], target: str | None = None
) -> StreamHandle[Any]: ...
@overload
def writer(
    key: str, /, *, execute: Callable[[StreamWriter], Any], target: str | None = None
) -> StreamHandle[Any]: ...
def writer(
    key: str = DEFAULT_KEY,
    /,
    *,
    execute: Callable[[StreamWriter], Any],
    target: str | None = None,
) -> StreamHandle[Any]:
    """Run ``execute(w)``, which writes chunks with ``w.write`` and ``w.merge``; ``execute`` may
    be a plain or an async function. Returns at once, like ``pipe``."""
    loop = asyncio.get_running_loop()
    chunk_writer = ChunkWriter(settings(), resolve_target(target), key)
    delivery = loop.create_task(_execute(execute, StreamWriter(chunk_writer, loop), chunk_writer))
    _track(delivery)
    return StreamHandle(delivery)


async def _execute(
    execute: Callable[[StreamWriter], Any], handle: StreamWriter, chunk_writer: ChunkWriter
) -> None:
    failure: BaseException | None = None
    try:
        if inspect.iscoroutinefunction(execute):
            await execute(handle)
        else:
            result = await asyncio.to_thread(execute, handle)
            if inspect.isawaitable(result):
                await result
        await handle._finish()
    except Exception as error:
        failure = error
    await chunk_writer.close()
    if failure is not None:
        raise failure


async def read(
    run_id: str,
    key: str = DEFAULT_KEY,
    *,
    timeout_in_seconds: int = 60,
    start_index: int = 0,
    access_token: str | None = None,
    base_url: str | None = None,
) -> ReadStream[Any]:
    """Read a run's stream from chunk ``start_index``: what is stored, then each new chunk,
    until the stream ends or no chunk arrives for ``timeout_in_seconds`` (at most 600).

    Lost connections are resumed at the next chunk. ``access_token`` reads with a public
    access token instead of the secret key; ``base_url`` reads from that server instead of
    the configured one.
    """
    if not 1 <= timeout_in_seconds <= MAX_TIMEOUT_IN_SECONDS:
        raise ValueError(
            f"timeout_in_seconds must be from 1 to {MAX_TIMEOUT_IN_SECONDS}, "
            f"not {timeout_in_seconds}"
        )
    if start_index < 0:
        raise ValueError(f"start_index must be 0 or more, not {start_index}")
    config = settings()
    if base_url is not None:
        config = ClientSettings(base_url.rstrip("/"), config.secret_key)
    progress = ReadProgress(start_index)
    batches = read_batches(
        config,
        run_id,
        key,
        start_index=start_index,
        timeout_in_seconds=timeout_in_seconds,
        access_token=access_token,
        progress=progress,
    )
    return ReadStream(batches, progress)


class StreamDefinition(Generic[T]):
    """A stream declared once — its key and chunk type — and used everywhere."""

    def __init__(self, id: str) -> None:
        self.id = id

    def pipe(self, source: Source[T], *, target: str | None = None) -> StreamHandle[T]:
        return pipe(self.id, source, target=target)

    async def append(self, value: T, *, target: str | None = None) -> None:
        await append(self.id, value, target=target)

    def writer(
        self, *, execute: Callable[[StreamWriter], Any], target: str | None = None
    ) -> StreamHandle[T]:
        return writer(self.id, execute=execute, target=target)

    async def read(
        self,
        run_id: str,
        *,
        timeout_in_seconds: int = 60,
        start_index: int = 0,
        access_token: str | None = None,
    ) -> ReadStream[T]:
        return await read(
            run_id,
            self.id,
            timeout_in_seconds=timeout_in_seconds,
            start_index=start_index,
            access_token=access_token,
        )


def define(*, id: str, type: type[T] | None = None) -> StreamDefinition[T]:
    """Declare a stream: ``define(id="ai-stream", type=str)``. ``type`` documents (and types)
    the chunks; it is not checked at run time."""
    return StreamDefinition(id)
