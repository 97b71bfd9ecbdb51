"""The task a real worker runs for tests/test_dashboard.py: ``runstream worker --tasks e2e_tasks``.

``e2e.pipe`` pipes ``payload["chunks"]`` (or ``count`` chunks ``"token-<i> "``) into the run's
``payload["key"]`` stream (``default`` if none), sleeping ``payload["delay"]`` seconds before
each chunk so that the stream grows while a page watches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from runstream import TaskContext, streams, task


def numbered_chunks(count: int) -> list[str]:
    """The chunks ``e2e.pipe`` writes for ``{"count": count}``."""
    return [f"token-{index} " for index in range(count)]


async def slowly(chunks: list[Any], delay: float) -> AsyncIterator[Any]:
    for chunk in chunks:
        await asyncio.sleep(delay)
        yield chunk


@task(id="e2e.pipe")
async def pipe_chunks(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    chunks = payload.get("chunks")
    if chunks is None:
        chunks = numbered_chunks(payload["count"])
    key = payload.get("key", "default")
    await streams.pipe(key, slowly(chunks, payload.get("delay", 0.0))).wait_until_complete()
    return {"chunks": len(chunks)}
