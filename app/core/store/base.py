"""What every part of the store shares: its engine, its hub, and its limits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from ..errors import TooLarge
from ..hub import Hub


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

    def _check_message_sizes(self, messages: Sequence[bytes]) -> None:
        limit = self.max_message_bytes
        if limit is None:
            return
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
