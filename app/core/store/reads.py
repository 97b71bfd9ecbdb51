"""Reading: a stream's metadata, and its messages from a position on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select, update

from ...db import reading, writing
from .. import offsets
from ..clock import utcnow
from ..errors import Busy, Gone, Invalid
from .base import TOUCH_WAIT_SECONDS, StoreBase
from .requests import ReadPlan, ReadResult
from .rows import (
    StreamInfo,
    StreamRow,
    chunks,
    existing_row_by_id,
    live_row,
    segments,
    streams,
)


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
        with reading(self.engine, snapshot=False) as conn:
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
        # No snapshot is needed (see reading()): the messages read are below the tail the
        # row gave, and those never change; a stream purged meanwhile has them all deleted in
        # one transaction, so the read finds them all or none, and the next read says why.
        with reading(self.engine, snapshot=False) as conn:
            row = live_row(conn, path, now)
            position = _start(row, position, past_tail_ok=past_tail_ok)
            messages: list[bytes] = []
            if position < row.next_position:
                messages = self._read_messages(conn, row, position, max_bytes)
        info = row.info()
        if row.ttl_seconds is not None:
            self._touch(row.id, now)
        return ReadResult(stream=info, messages=messages, next_position=position + len(messages))

    def write_times(self, path: str, start: int, stop: int) -> list[datetime]:
        """When each message from ``start`` up to ``stop`` was appended, as the store recorded
        it: what a viewer shows beside each chunk. Positions past the tail are left out."""
        with reading(self.engine) as conn:
            row = live_row(conn, path, utcnow())
            times: list[datetime] = []
            for stream_id, low, high in segments(conn, row):
                end = stop if high is None else min(stop, high)
                if end <= max(start, low):
                    continue
                times.extend(
                    conn.execute(
                        select(chunks.c.created_at)
                        .where(
                            chunks.c.stream_id == stream_id,
                            chunks.c.position >= max(start, low),
                            chunks.c.position < end,
                        )
                        .order_by(chunks.c.position)
                    ).scalars()
                )
        return times

    def plan_read(self, path: str, position: int | None, *, max_bytes: int) -> ReadPlan:
        """What a read from ``position`` (None: the tail) of up to about ``max_bytes`` answers,
        from the messages' sizes alone; :meth:`pages` then reads them.

        As :meth:`read`: at least one message when one exists, however large, and a position
        past the tail is a 400. The sizes are summed by the database, so planning a read of
        many megabytes moves none of them.
        """
        self._count_read()
        now = utcnow()
        with reading(self.engine) as conn:
            row = live_row(conn, path, now)
            start = _start(row, position, past_tail_ok=False)
            end, size = start, 0
            for stream_id, _low, high in segments(conn, row):
                segment_end = row.next_position if high is None else high
                if segment_end <= end:
                    continue
                count, taken = _fitting(conn, stream_id, end, segment_end, max_bytes - size)
                if count == 0 and end == start:
                    count, taken = 1, _size_at(conn, stream_id, end)
                end, size = end + count, size + taken
                if end < segment_end:
                    break  # the budget ends inside this segment
        if row.ttl_seconds is not None:
            self._touch(row.id, now)
        return ReadPlan(stream=row.info(), start=start, end=end, size=size)

    def pages(self, plan: ReadPlan, *, page_bytes: int) -> Iterator[list[bytes]]:
        """The messages of ``plan``, about ``page_bytes`` at a time, each page read in its own
        short transaction: a slow client holds no database connection while it takes a page.

        The stream is found by its id, never again by its path (which a new stream may have
        taken meanwhile). Messages never change once stored, so the pages are exactly what was
        planned; if the stream's messages were purged in between, the pages stop with
        :class:`Gone`, and the response they were for is cut short.
        """
        position = plan.start
        while position < plan.end:
            with reading(self.engine) as conn:
                row = existing_row_by_id(conn, plan.stream.id)
                page = (
                    self._read_messages(conn, row, position, page_bytes, end=plan.end)
                    if row is not None
                    else []
                )
            if not page:
                raise Gone(f"stream {plan.stream.path!r} was deleted while it was being read")
            position += len(page)
            yield page

    def _read_messages(
        self,
        conn: Connection,
        row: StreamRow,
        position: int,
        max_bytes: int,
        *,
        end: int | None = None,
    ) -> list[bytes]:
        messages: list[bytes] = []
        size = 0
        for stream_id, low, high in segments(conn, row):
            if high is not None and high <= position:
                continue
            below = min(
                row.next_position if high is None else high,
                row.next_position if end is None else end,
            )
            result = conn.execution_options(yield_per=64).execute(
                MESSAGES, {"stream_id": stream_id, "start": max(position, low), "below": below}
            )
            for (data,) in result:
                if messages and size + len(data) > max_bytes:
                    result.close()
                    return messages
                messages.append(bytes(data))
                size += len(data)
        return messages

    def _touch(self, stream_id: int, now: datetime) -> None:
        """Restart a stream's sliding TTL window: reads count as activity. Best effort: a read
        waits for the write lock only briefly, and when the database is busy (or read-only) its
        answer stands and the next read or write restarts the window (see TOUCH_WAIT_SECONDS)."""
        with suppress(Busy), writing(self.engine, wait=TOUCH_WAIT_SECONDS) as conn:
            conn.execute(update(streams).where(streams.c.id == stream_id).values(touched_at=now))


def _start(row: StreamRow, position: int | None, *, past_tail_ok: bool) -> int:
    """Where a read starts: ``position``, or the tail for None; past the tail is a 400."""
    if position is None:
        return row.next_position
    if position > row.next_position and not past_tail_ok:
        raise Invalid(
            f"offset {offsets.encode(position)} is past the stream's tail "
            f"{offsets.encode(row.next_position)}"
        )
    return position


# The statements of every read, built once (see rows.py). A segment's messages are those of
# one stream from a position up to, not including, ``below``.
_SEGMENT = (
    chunks.c.stream_id == bindparam("stream_id"),
    chunks.c.position >= bindparam("start"),
    chunks.c.position < bindparam("below"),
)
_sizes = (
    select(func.sum(func.length(chunks.c.data)).over(order_by=chunks.c.position).label("upto"))
    .where(*_SEGMENT)
    .subquery()
)
FITTING = select(func.count(), func.coalesce(func.max(_sizes.c.upto), 0)).where(
    _sizes.c.upto <= bindparam("budget")
)
SIZE_AT = select(func.length(chunks.c.data)).where(
    chunks.c.stream_id == bindparam("stream_id"), chunks.c.position == bindparam("position")
)
MESSAGES = select(chunks.c.data).where(*_SEGMENT).order_by(chunks.c.position)


def _fitting(
    conn: Connection, stream_id: int, start: int, end: int, budget: int
) -> tuple[int, int]:
    """How many of the messages ``start`` to ``end`` of one segment fit in ``budget`` bytes, in
    order, and their size."""
    if budget <= 0:
        return 0, 0
    count, size = conn.execute(
        FITTING, {"stream_id": stream_id, "start": start, "below": end, "budget": budget}
    ).one()
    return int(count), int(size)


def _size_at(conn: Connection, stream_id: int, position: int) -> int:
    return int(conn.execute(SIZE_AT, {"stream_id": stream_id, "position": position}).scalar_one())
