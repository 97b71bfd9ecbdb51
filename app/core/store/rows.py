"""The rows the store works with: streams, their messages, and the fork chains between them.

Functions here run inside a transaction the caller holds; they never commit. A fork keeps only
its own messages and reads the ones before its fork position from its source (which may itself
be a fork), so reading a stream's messages means walking its *segments*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Dialect,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)

from ...db.models import Chunk, Producer, Stream
from .. import offsets
from ..content_types import is_json
from ..errors import Gone, Invalid, NotFound, TooLarge

# Longer TTLs than a century are surely mistakes, and they would overflow date arithmetic.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
# What the columns hold; longer values are refused with a message rather than a database error.
MAX_PATH_LENGTH = 1024
MAX_NAME_LENGTH = 255
# The most messages one append (or create) may carry. An append holds its stream's row lock and
# the database's write path while it inserts: two million tiny messages in one request held it
# for 28 s, delaying every other stream's appends as long. The official client's idempotent
# producer sends batches of up to 1 MiB by default, about 10,500 messages of 100 bytes; this
# limit takes 1 MiB of messages down to 10 bytes each, and 100,000 small messages hold the
# write path for about half a second here.
MAX_MESSAGES_PER_APPEND = 100_000

streams = cast(Table, Stream.__table__)
chunks = cast(Table, Chunk.__table__)
producers = cast(Table, Producer.__table__)


@dataclass(frozen=True)
class StreamInfo:
    """What a client may learn about a stream: its configuration and how far it has grown."""

    id: int
    path: str
    content_type: str
    next_position: int
    total_bytes: int
    closed: bool
    ttl_seconds: int | None
    expires_at: datetime | None
    created_at: datetime

    @property
    def next_offset(self) -> str:
        return offsets.encode(self.next_position)

    @property
    def is_json(self) -> bool:
        return is_json(self.content_type)


@dataclass(frozen=True)
class StreamRow:
    """A row of the streams table, as the store works with it inside a transaction."""

    id: int
    path: str | None
    content_type: str
    created_at: datetime
    touched_at: datetime
    ttl_seconds: int | None
    written_at: datetime
    retention_seconds: int | None
    expires_at: datetime | None
    next_position: int
    total_bytes: int
    closed: bool
    last_stream_seq: str | None
    deleted: bool
    fork_source_id: int | None
    fork_position: int
    fork_offset: str | None
    fork_sub_offset: int

    @classmethod
    def columns(cls) -> list[Any]:
        return [streams.c[field.name] for field in fields(cls)]

    def is_expired(self, now: datetime) -> bool:
        if self.expires_at is not None and self.expires_at <= now:
            return True
        if (
            self.retention_seconds is not None
            and self.written_at + timedelta(seconds=self.retention_seconds) <= now
        ):
            return True
        return (
            self.ttl_seconds is not None
            and self.touched_at + timedelta(seconds=self.ttl_seconds) <= now
        )

    def info(self) -> StreamInfo:
        return StreamInfo(
            id=self.id,
            path=self.path or "",
            content_type=self.content_type,
            next_position=self.next_position,
            total_bytes=self.total_bytes,
            closed=self.closed,
            ttl_seconds=self.ttl_seconds,
            expires_at=self.expires_at,
            created_at=self.created_at,
        )


# The statements of the append and read paths, built once: building a statement costs more
# than running it on SQLite.
STREAM_BY_PATH = select(*StreamRow.columns()).where(streams.c.path == bindparam("path"))
STREAM_BY_PATH_FOR_UPDATE = STREAM_BY_PATH.with_for_update()
STREAM_BY_ID = select(*StreamRow.columns()).where(streams.c.id == bindparam("id"))
PRODUCER_STATE = select(producers.c.epoch, producers.c.last_seq).where(
    producers.c.stream_id == bindparam("stream_id"),
    producers.c.producer_id == bindparam("producer_id"),
)
ADVANCE_STREAM = (
    update(streams)
    .where(streams.c.id == bindparam("match_id"))
    .values(
        next_position=bindparam("next_position"),
        total_bytes=bindparam("total_bytes"),
        touched_at=bindparam("touched_at"),
        written_at=bindparam("touched_at"),
        last_stream_seq=func.coalesce(
            bindparam("stream_seq", type_=String), streams.c.last_stream_seq
        ),
        closed=streams.c.closed | bindparam("close", type_=Boolean),
    )
)


def find_row(conn: Connection, path: str, *, lock: bool = False) -> StreamRow | None:
    if "\x00" in path:
        return None  # no stream can have it, and PostgreSQL cannot even compare it
    query = STREAM_BY_PATH_FOR_UPDATE if lock else STREAM_BY_PATH
    found = conn.execute(query, {"path": path}).first()
    return StreamRow(*found) if found is not None else None


def row_by_id(conn: Connection, stream_id: int) -> StreamRow:
    found = existing_row_by_id(conn, stream_id)
    assert found is not None, f"stream {stream_id} is gone"
    return found


def existing_row_by_id(conn: Connection, stream_id: int) -> StreamRow | None:
    """The stream with ``stream_id``, or None when it was removed meanwhile."""
    found = conn.execute(STREAM_BY_ID, {"id": stream_id}).first()
    return None if found is None else StreamRow(*found)


def require_live(row: StreamRow | None, path: str, now: datetime) -> StreamRow:
    """The stream at ``path`` for a request: NotFound if absent or expired, Gone if deleted."""
    if row is None or row.is_expired(now):
        raise NotFound(f"stream {path!r} does not exist")
    if row.deleted:
        raise Gone(f"stream {path!r} has been deleted")
    return row


def live_row(conn: Connection, path: str, now: datetime, *, lock: bool = False) -> StreamRow:
    return require_live(find_row(conn, path, lock=lock), path, now)


def insert_messages(
    conn: Connection, stream_id: int, start: int, messages: Sequence[bytes], now: datetime
) -> None:
    """Insert an append's messages as rows ``start``, ``start + 1``, ...

    The rows go to the driver's executemany as plain tuples: SQLAlchemy's executemany runs every
    column's bind processor for every row, and for a batch of small messages that cost twice
    the insert itself (the same ``created_at``, converted a hundred thousand times). Here it is
    converted once.
    """
    if not messages:
        return
    sql, created_at_processor = _insert_chunks_for(conn.dialect)
    created_at = created_at_processor(now) if created_at_processor is not None else now
    conn.exec_driver_sql(
        sql,
        [(stream_id, start + index, data, created_at) for index, data in enumerate(messages)],
    )


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_insert_chunks: dict[str, tuple[str, Callable[[Any], Any] | None]] = {}


def _insert_chunks_for(dialect: Dialect) -> tuple[str, Callable[[Any], Any] | None]:
    """The chunk insert in the dialect's own placeholders, and created_at's bind processor:
    made once per dialect."""
    made = _insert_chunks.get(dialect.name)
    if made is None:
        mark = _PLACEHOLDERS[dialect.paramstyle]
        columns = (chunks.c.stream_id, chunks.c.position, chunks.c.data, chunks.c.created_at)
        quote = dialect.identifier_preparer.quote
        sql = (
            f"INSERT INTO {quote(chunks.name)} ({', '.join(quote(c.name) for c in columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        # The dialect's own form of the type: what SQLAlchemy itself would send.
        created_at = chunks.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        made = _insert_chunks[dialect.name] = (sql, created_at)
    return made


def has_forks(conn: Connection, stream_id: int) -> bool:
    return (
        conn.execute(
            select(streams.c.id).where(streams.c.fork_source_id == stream_id).limit(1)
        ).first()
        is not None
    )


def segments(conn: Connection, row: StreamRow) -> list[tuple[int, int, int | None]]:
    """The (stream id, first position, end position) ranges a stream's messages live in.

    A stream that is no fork keeps all its messages itself. A fork reads the positions below
    its fork position from its source, which may itself be a fork.
    """
    found: list[tuple[int, int, int | None]] = []
    upper: int | None = None
    node: StreamRow | None = row
    while node is not None:
        low = node.fork_position if node.fork_source_id is not None else 0
        if upper is None or low < upper:
            found.append((node.id, low, upper))
        upper = low if upper is None else min(upper, low)
        node = (
            row_by_id(conn, node.fork_source_id)
            if node.fork_source_id is not None and upper > 0
            else None
        )
    found.reverse()
    return found


def message_at(conn: Connection, row: StreamRow, position: int) -> bytes | None:
    for stream_id, low, high in segments(conn, row):
        if low <= position and (high is None or position < high):
            data = conn.execute(
                select(chunks.c.data).where(
                    chunks.c.stream_id == stream_id, chunks.c.position == position
                )
            ).scalar()
            return bytes(data) if data is not None else None
    return None


def bytes_before(conn: Connection, row: StreamRow, position: int) -> int:
    if position >= row.next_position:
        return int(row.total_bytes)
    total = 0
    for stream_id, low, high in segments(conn, row):
        end = position if high is None else min(high, position)
        if end <= low:
            continue
        total += conn.execute(
            select(func.coalesce(func.sum(func.length(chunks.c.data)), 0)).where(
                chunks.c.stream_id == stream_id,
                chunks.c.position >= low,
                chunks.c.position < end,
            )
        ).scalar_one()
    return total


def check_length(what: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Invalid(f"{what} is {len(value)} characters long; the limit is {limit}")


def check_message_count(messages: Sequence[bytes], limit: int = MAX_MESSAGES_PER_APPEND) -> None:
    """Refuse a request of more messages than one write may hold the stream for."""
    if len(messages) > limit:
        raise TooLarge(
            f"{len(messages)} messages in one request is more than the limit of {limit}: "
            "send them in several requests"
        )
