"""The blocking face's way into the asyncio core: a private event loop in a daemon thread.

Blocking calls submit a coroutine to that loop and wait for its result. The caller's context
variables travel with the coroutine, so a blocking stream call inside a task still finds its
run. This is how :mod:`runstream.sync` shares every line of logic with the asyncio API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="runstream-sdk-loop", daemon=True
            )
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the SDK's loop, in the caller's context, and block for its result."""
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError(
            "the blocking runstream.sync API was called from the SDK's own event loop; "
            "use the asyncio API (runstream.streams) from async code"
        )
    loop = _running_loop()
    context = contextvars.copy_context()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        task = loop.create_task(coroutine, context=context)
        task.add_done_callback(lambda done: _settle(done, result))

    loop.call_soon_threadsafe(start)
    return result.result()


def call(function: Callable[[], T]) -> T:
    """Call ``function`` on the SDK's loop (for calls that start background tasks there)."""

    async def call_in_loop() -> T:
        return function()

    return run(call_in_loop())


def iterate(iterator: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async iterator that lives on the SDK's loop."""
    while True:
        try:
            yield run(_next(iterator))
        except StopAsyncIteration:
            return


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


def _settle(task: asyncio.Task[T], result: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        result.cancel()
    elif task.exception() is not None:
        result.set_exception(task.exception())
    else:
        result.set_result(task.result())
