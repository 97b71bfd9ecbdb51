"""The blocking face's way into the asyncio core: the process's one event loop.

Blocking calls submit a coroutine to :func:`runstream.event_loop.process_loop` and wait for its
result. The caller's context variables travel with the coroutine, so a blocking stream call
inside a task still finds its run. This is how :mod:`runstream.sync` shares every line of logic
with the asyncio API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .event_loop import in_process_loop, process_loop

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the process's loop, in the caller's context, and block for its
    result."""
    if in_process_loop():
        coroutine.close()
        raise RuntimeError(
            "the blocking runstream.sync API was called from the SDK's own event loop; "
            "use the asyncio API (runstream.streams) from async code"
        )
    # call_soon_threadsafe, underneath, runs the task in a copy of the caller's context.
    return asyncio.run_coroutine_threadsafe(coroutine, process_loop()).result()


def call(function: Callable[[], T]) -> T:
    """Call ``function`` on the process's loop (for calls that start background tasks there)."""

    async def call_in_loop() -> T:
        return function()

    return run(call_in_loop())


def iterate(iterator: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async iterator that lives on the process's loop."""
    while True:
        try:
            yield run(_next(iterator))
        except StopAsyncIteration:
            return


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()
