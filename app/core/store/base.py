"""What every part of the store shares: its engine, its hub, and its limits."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ...db.engine import reading
from ..errors import Busy, TooLarge
from ..hub import Hub

# How long a read of a stream with a sliding TTL waits for the write lock to restart the TTL's
# window: a read must not wait behind writers; if the lock is not free by then, the window is
# restarted by the stream's next read or write instead, long before any TTL runs out.
TOUCH_WAIT_SECONDS = 0.25


class StoreBase:
    def __init__(
        self,
        engine: Engine,
        hub: Hub,
        *,
        max_stream_bytes: int | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.hub = hub
        self.max_stream_bytes = max_stream_bytes
        self.max_message_bytes = max_message_bytes
        self._reads = 0
        self._reads_lock = threading.Lock()

    @property
    def read_count(self) -> int:
        """How many times streams were read since the store was made: what live readers cost
        the database, where tests and benchmarks can see it."""
        return self._reads

    def check(self) -> str | None:
        """What keeps the database from answering (one line), or None when it answers."""
        try:
            with reading(self.engine) as conn:
                conn.execute(text("SELECT 1"))
        except Busy as busy:
            return busy.message
        except DBAPIError as error:
            return f"the database does not answer: {type(error.orig).__name__}"
        return None

    def _count_read(self) -> None:
        with self._reads_lock:
            self._reads += 1

    def _check_message_sizes(
        self, messages: Sequence[bytes], lower_limit: int | None = None
    ) -> None:
        limits = [limit for limit in (self.max_message_bytes, lower_limit) if limit is not None]
        if not limits:
            return
        limit = min(limits)
        for message in messages:
            if len(message) > limit:
                raise TooLarge(
                    f"a message of {len(message)} bytes is over the limit of {limit} bytes "
                    "per message; split it into smaller chunks"
                )

    def _check_size(self, total_bytes: int) -> None:
        if self.max_stream_bytes is not None and total_bytes > self.max_stream_bytes:
            raise TooLarge(
                f"the stream would hold {total_bytes} bytes, more than its limit of "
                f"{self.max_stream_bytes} bytes"
            )
