"""Reading: a stream's metadata, and its messages from a position on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from ...db import reading, writing
from .. import offsets
from ..clock import utcnow
from ..errors import Invalid
from .base import StoreBase
from .requests import ReadResult
from .rows import StreamInfo, StreamRow, chunks, live_row, segments, streams


class Reads(StoreBase):
    def streams_under(self, prefix: str) -> list[StreamInfo]:
        """The live streams whose path starts with ``prefix``, in path order."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        now = utcnow()
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(*StreamRow.columns())
                .where(streams.c.path.like(pattern, escape="\\"), streams.c.deleted.is_(False))
                .order_by(streams.c.path)
            ).all()
        return [
            stream.info()
            for stream in (StreamRow(*row) for row in rows)
            if not stream.is_expired(now)
        ]

    def head(self, path: str) -> StreamInfo:
        with reading(self.engine) as conn:
            return live_row(conn, path, utcnow()).info()

    def read(
        self, path: str, position: int | None, *, max_bytes: int, past_tail_ok: bool = False
    ) -> ReadResult:
        """Messages from ``position`` (None: the tail) up to about ``max_bytes``.

        At least one message is returned when one exists, however large. A position past the
        tail is a 400, unless ``past_tail_ok``: then there is nothing to read there *yet*.
        """
        self._count_read()
        now = utcnow()
        with reading(self.engine) as conn:
            row = live_row(conn, path, now)
            info = row.info()
            if position is None:
                position = row.next_position
            if position > row.next_position and not past_tail_ok:
                raise Invalid(
                    f"offset {offsets.encode(position)} is past the stream's tail "
                    f"{info.next_offset}"
                )
            messages: list[bytes] = []
            if position < row.next_position:
                messages = self._read_messages(conn, row, position, max_bytes)
        if row.ttl_seconds is not None:
            self._touch(row.id, now)
        return ReadResult(stream=info, messages=messages, next_position=position + len(messages))

    def _read_messages(
        self, conn: Connection, row: StreamRow, position: int, max_bytes: int
    ) -> list[bytes]:
        messages: list[bytes] = []
        size = 0
        for stream_id, low, high in segments(conn, row):
            if high is not None and high <= position:
                continue
            query = (
                select(chunks.c.data)
                .where(chunks.c.stream_id == stream_id, chunks.c.position >= max(position, low))
                .order_by(chunks.c.position)
            )
            if high is not None:
                query = query.where(chunks.c.position < high)
            result = conn.execution_options(yield_per=64).execute(query)
            for (data,) in result:
                if messages and size + len(data) > max_bytes:
                    result.close()
                    return messages
                messages.append(bytes(data))
                size += len(data)
        return messages

    def _touch(self, stream_id: int, now: datetime) -> None:
        """Restart a stream's sliding TTL window: reads count as activity."""
        with writing(self.engine) as conn:
            conn.execute(update(streams).where(streams.c.id == stream_id).values(touched_at=now))
