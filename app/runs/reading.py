"""Reading run streams in-process, as the ReactPy hooks rendered inside the server do: the
server's :class:`runstream.reading.ChunkSource`, reading the store and woken by the hub."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from runstream.reading import ReadProgress, ReadStream

from ..core.hub import Hub
from .run_streams import RunStreamCursor, RunStreams


class InProcessChunkSource:
    def __init__(self, run_streams: RunStreams, hub: Hub, *, max_read_bytes: int) -> None:
        self._run_streams = run_streams
        self._hub = hub
        self._max_read_bytes = max_read_bytes

    async def read(
        self, run_id: str, key: str, *, start_index: int, timeout_in_seconds: int
    ) -> ReadStream[Any]:
        cursor = await asyncio.to_thread(
            RunStreamCursor, self._run_streams, run_id, key, start_index, self._max_read_bytes
        )
        progress = ReadProgress(start_index)
        return ReadStream(self._follow(cursor, progress, timeout_in_seconds), progress)

    async def _follow(
        self, cursor: RunStreamCursor, progress: ReadProgress, timeout_in_seconds: int
    ) -> AsyncIterator[list[Any]]:
        deadline = time.monotonic() + timeout_in_seconds
        async with self._hub.subscribe_async(cursor.path) as subscription:
            while True:
                step = await asyncio.to_thread(cursor.step)
                if step.chunks:
                    progress.next_index = step.index + len(step.chunks)
                    yield [json.loads(chunk) for chunk in step.chunks]
                    deadline = time.monotonic() + timeout_in_seconds
                if step.ended:
                    progress.ended = True
                    return
                if step.chunks:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return  # no data for timeout_in_seconds: stop, without an error
                await subscription.wait(remaining)
