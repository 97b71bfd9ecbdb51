"""Reading run streams in-process, as the ReactPy hooks rendered inside the server do: the
server's :class:`runstream.reading.ChunkSource`, following the store through the core's
:class:`~runstream.server.core.follower.AsyncFollower`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from runstream.reading import ReadProgress, ReadStream

from ..core.follower import AsyncFollower, Batch
from ..core.hub import Hub
from .auth import Auth
from .run_streams import RunStreamReading, RunStreams


class InProcessChunkSource:
    def __init__(
        self, run_streams: RunStreams, hub: Hub, auth: Auth, *, max_read_bytes: int
    ) -> None:
        self._run_streams = run_streams
        self._hub = hub
        self._auth = auth
        self._max_read_bytes = max_read_bytes

    async def read(
        self,
        run_id: str,
        key: str,
        *,
        start_index: int,
        timeout_in_seconds: int,
        access_token: str | None = None,
    ) -> ReadStream[Any]:
        if access_token is not None:
            principal = self._auth.authenticate_in_process(access_token)
            principal.require_run(run_id)
        reading = await asyncio.to_thread(
            RunStreamReading, self._run_streams, run_id, key, self._max_read_bytes
        )
        progress = ReadProgress(start_index)
        return ReadStream(self._follow(reading, progress, timeout_in_seconds), progress)

    async def write_times(self, run_id: str, key: str, start: int, stop: int) -> list[datetime]:
        return await asyncio.to_thread(self._run_streams.write_times, run_id, key, start, stop)

    async def _follow(
        self, reading: RunStreamReading, progress: ReadProgress, timeout_in_seconds: int
    ) -> AsyncIterator[list[Any]]:
        async with AsyncFollower(
            self._hub, reading.path, progress.next_index, reading.read
        ) as follower:
            deadline = time.monotonic() + timeout_in_seconds
            while True:
                batch = await follower.next(deadline - time.monotonic())
                if batch is None:
                    return  # no data for timeout_in_seconds: stop, without an error
                if batch.messages:
                    progress.next_index = batch.next_position
                    yield decoded(batch)
                    deadline = time.monotonic() + timeout_in_seconds
                if batch.reached_end:
                    progress.ended = True
                    return


def decoded(batch: Batch) -> list[Any]:
    """The batch's chunks as values, decoded once for every hook that shows them (the list is
    copied: a hook may keep it; the values are shared and never changed)."""
    values: list[Any] = batch.encoded("values", lambda: [json.loads(m) for m in batch.messages])
    return list(values)
