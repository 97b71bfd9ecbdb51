"""The store: the one place where streams are created, appended to, read, closed and deleted.

Every change is one database transaction, so what a client was told succeeded is exactly what is
stored: the idempotent-producer check, the inserted messages and the stream's counters commit
together or not at all, and a retried append can never be stored twice. After a commit the store
publishes the stream's path on the hub, which wakes readers waiting at the tail.

Write transactions lock the stream's row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the
database-wide write lock, taken up front by ``BEGIN IMMEDIATE`` and queued in-process by a lock so
that waiting writers hand over in order instead of sleeping in SQLite's busy handler). Holding the
row lock serializes appends per stream, which is what gives each message its position and what
the protocol asks of idempotent producers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from . import offsets
from .content_types import is_json, same_content_type
from .db import reading, writing
from .errors import BadRequest, Conflict, Forbidden, Gone, NotFound, PayloadTooLarge
from .hub import Hub
from .models import Chunk, Producer, Stream

# Longer TTLs than a century are surely mistakes, and they would overflow date arithmetic.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
# What the columns hold; longer values are refused with a message rather than a database error.
MAX_PATH_LENGTH = 1024
MAX_NAME_LENGTH = 255

streams = cast(Table, Stream.__table__)
chunks = cast(Table, Chunk.__table__)
producers = cast(Table, Producer.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


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


# The statements of the append path, built once: building a statement costs more than running
# it on SQLite.
_STREAM_BY_PATH = select(*StreamRow.columns()).where(streams.c.path == bindparam("path"))
_STREAM_BY_PATH_FOR_UPDATE = _STREAM_BY_PATH.with_for_update()
_PRODUCER_STATE = select(producers.c.epoch, producers.c.last_seq).where(
    producers.c.stream_id == bindparam("stream_id"),
    producers.c.producer_id == bindparam("producer_id"),
)
_INSERT_CHUNKS = insert(chunks)
_ADVANCE_STREAM = (
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


@dataclass(frozen=True)
class ForkRequest:
    source_path: str
    offset: str | None = None
    sub_offset: int = 0


@dataclass(frozen=True)
class CreateRequest:
    content_type: str
    messages: Sequence[bytes] = ()
    ttl_seconds: int | None = None
    expires_at: datetime | None = None
    # Expire this many seconds after the last append (run streams), whatever the reads.
    retention_seconds: int | None = None
    closed: bool = False
    fork: ForkRequest | None = None


@dataclass(frozen=True)
class CreateResult:
    created: bool
    stream: StreamInfo


@dataclass(frozen=True)
class ProducerClaim:
    """The ``Producer-Id`` / ``Producer-Epoch`` / ``Producer-Seq`` of an idempotent append."""

    producer_id: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class ProducerState:
    """What the store remembers of a producer on a stream: its epoch and last accepted seq."""

    epoch: int
    last_seq: int


@dataclass(frozen=True)
class AppendRequest:
    messages: Sequence[bytes]
    content_type: str | None = None
    producer: ProducerClaim | None = None
    # False: the producer's seq numbers this request, as in HTTP. True: it numbers the first
    # message and each further message takes the next number, as websocket writers count; a
    # resent batch that is partly stored then stores only its unstored tail.
    seq_per_message: bool = False
    stream_seq: str | None = None
    close: bool = False
    # Create the stream with this configuration if it does not exist, in the append's own
    # transaction: an append that is refused creates nothing.
    create_if_missing: CreateRequest | None = None

    @property
    def producer_count(self) -> int:
        return max(1, len(self.messages)) if self.seq_per_message else 1


@dataclass(frozen=True)
class AppendResult:
    stream: StreamInfo
    # False when the request was recognised as a retry of one already stored.
    stored: bool
    # The producer's highest accepted sequence number in its epoch, for idempotent appends.
    producer_seq: int | None = None


@dataclass(frozen=True)
class ReadResult:
    stream: StreamInfo
    messages: list[bytes] = field(default_factory=list)
    next_position: int = 0

    @property
    def up_to_date(self) -> bool:
        return self.next_position >= self.stream.next_position

    @property
    def reached_end(self) -> bool:
        """True when the reader has everything and no more will ever come."""
        return self.stream.closed and self.up_to_date


class Store:
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

    # -- create ------------------------------------------------------------------------------

    def create(self, path: str, request: CreateRequest) -> CreateResult:
        """Create the stream at ``path``, or confirm that the same stream already exists."""
        try:
            result = self._create(path, request)
        except IntegrityError:
            # Another writer created the path between our check and our insert (PostgreSQL,
            # where the check does not lock a row that does not exist yet): compare with theirs.
            result = self._create(path, request)
        if result.created:
            self.hub.publish(path)
        return result

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

    def _create(self, path: str, request: CreateRequest) -> CreateResult:
        _check_length("the stream path", path, MAX_PATH_LENGTH)
        self._check_message_sizes(request.messages)
        if any(ord(character) < 0x20 or ord(character) == 0x7F for character in path):
            raise BadRequest("a stream path must not contain control characters")
        _check_length("Content-Type", request.content_type, MAX_NAME_LENGTH)
        if request.ttl_seconds is not None and not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            raise BadRequest(
                f"Stream-TTL must be from 0 to {MAX_TTL_SECONDS} seconds (100 years), "
                f"not {request.ttl_seconds}"
            )
        now = utcnow()
        with writing(self.engine) as conn:
            existing = self._row(conn, path, lock=True)
            if existing is not None:
                if existing.deleted:
                    raise Conflict(
                        f"stream {path!r} was deleted and is kept only for its forks; "
                        "its path cannot be used again"
                    )
                if not existing.is_expired(now):
                    self._check_same_config(conn, existing, request)
                    return CreateResult(created=False, stream=existing.info())
            row = self._insert_stream(conn, path, request, now, replacing=existing)
        return CreateResult(created=True, stream=row.info())

    def _insert_stream(
        self,
        conn: Connection,
        path: str,
        request: CreateRequest,
        now: datetime,
        *,
        replacing: StreamRow | None,
    ) -> StreamRow:
        """Insert a new stream at ``path``, retiring the expired one it replaces."""
        if replacing is not None:
            self._retire(conn, replacing)
        values: dict[str, Any] = {
            "path": path,
            "content_type": request.content_type,
            "created_at": now,
            "touched_at": now,
            "written_at": now,
            "ttl_seconds": request.ttl_seconds,
            "expires_at": request.expires_at,
            "retention_seconds": request.retention_seconds,
            "closed": request.closed,
        }
        own_messages = list(request.messages)
        if request.fork is not None:
            fork_values, inherited_tail = self._fork_values(conn, request)
            values.update(fork_values)
            own_messages = inherited_tail + own_messages
        start = values.get("fork_position", 0)
        values["next_position"] = start + len(own_messages)
        values["total_bytes"] = values.pop("inherited_bytes", 0) + sum(
            len(message) for message in own_messages
        )
        self._check_size(values["total_bytes"])
        stream_id = conn.execute(
            insert(streams).values(values).returning(streams.c.id)
        ).scalar_one()
        self._insert_messages(conn, stream_id, start, own_messages, now)
        return self._row_by_id(conn, stream_id)

    def _check_same_config(self, conn: Connection, row: StreamRow, request: CreateRequest) -> None:
        """Raise Conflict unless repeating ``request`` would create the stream ``row`` is."""
        fork = request.fork
        source = (
            self._row_by_id(conn, row.fork_source_id) if row.fork_source_id is not None else None
        )
        ttl, expires_at = request.ttl_seconds, request.expires_at
        if source is not None and ttl is None and expires_at is None:
            # A fork created without an expiry took its source's; so does the same request again.
            ttl, expires_at = source.ttl_seconds, source.expires_at

        differences = []
        if request.content_type and not same_content_type(row.content_type, request.content_type):
            differences.append(f"content type is {row.content_type!r}")
        if row.ttl_seconds != ttl:
            differences.append(f"Stream-TTL is {row.ttl_seconds}")
        if row.expires_at != expires_at:
            shown = row.expires_at.isoformat() if row.expires_at else None
            differences.append(f"Stream-Expires-At is {shown}")
        if row.closed != request.closed:
            differences.append("it is closed" if row.closed else "it is open")
        source_path = source.path if source is not None else None
        if (fork.source_path if fork else None) != source_path:
            differences.append(
                f"it is forked from {source_path!r}" if source_path else "it is not a fork"
            )
        elif fork is not None and (
            # Without an offset (or with "now") a fork is taken at the source's tail, wherever
            # that is now; any explicit offset must be the one the fork was made at.
            (
                fork.offset not in (None, offsets.NOW)
                and _fork_offset(fork.offset) != row.fork_offset
            )
            or fork.sub_offset != row.fork_sub_offset
        ):
            differences.append(f"it was forked at offset {row.fork_offset}")
        if differences:
            raise Conflict(
                f"stream {row.path!r} already exists with a different configuration: "
                + "; ".join(differences)
            )

    def _fork_values(
        self, conn: Connection, request: CreateRequest
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Where a fork branches from its source, and the partial message it copies, if any."""
        fork = request.fork
        assert fork is not None
        source = self._row(conn, fork.source_path, lock=True)
        if source is None or source.is_expired(utcnow()):
            raise NotFound(f"fork source stream {fork.source_path!r} does not exist")
        if source.deleted:
            raise Conflict(f"fork source stream {fork.source_path!r} has been deleted")
        if request.content_type and not same_content_type(
            source.content_type, request.content_type
        ):
            raise Conflict(
                f"a fork must have its source's content type {source.content_type!r}, "
                f"not {request.content_type!r}"
            )
        if fork.offset is None or fork.offset == offsets.NOW:
            position = source.next_position
        elif fork.offset == offsets.START:
            position = 0
        else:
            position = offsets.decode(fork.offset)
        if position > source.next_position:
            raise BadRequest(
                f"Stream-Fork-Offset {fork.offset} is past the source stream's tail "
                f"{offsets.encode(source.next_position)}"
            )
        values: dict[str, Any] = {
            "content_type": request.content_type or source.content_type,
            "fork_source_id": source.id,
            "fork_offset": offsets.encode(position),
            "fork_sub_offset": fork.sub_offset,
        }
        if request.ttl_seconds is None and request.expires_at is None:
            values["ttl_seconds"] = source.ttl_seconds
            values["expires_at"] = source.expires_at

        copied: list[bytes] = []
        if fork.sub_offset:
            segment = self._message_at(conn, source, position)
            if is_json(source.content_type):
                if position + fork.sub_offset > source.next_position:
                    raise BadRequest(
                        f"Stream-Fork-Sub-Offset {fork.sub_offset} is past the source's tail"
                    )
                position += fork.sub_offset
            else:
                if segment is None or fork.sub_offset > len(segment):
                    raise BadRequest(
                        f"Stream-Fork-Sub-Offset {fork.sub_offset} is past the end of the "
                        "message at Stream-Fork-Offset"
                    )
                copied = [segment[: fork.sub_offset]]
        values["fork_position"] = position
        values["inherited_bytes"] = self._bytes_before(conn, source, position)
        return values, copied

    # -- append ------------------------------------------------------------------------------

    def append(self, path: str, request: AppendRequest) -> AppendResult:
        """Append messages (and/or close the stream), exactly once per producer request."""
        result = self._append(path, request)
        if result.stored:
            self.hub.publish(path)
        return result

    def _append(self, path: str, request: AppendRequest) -> AppendResult:
        """Validate and store one append, in the order the protocol gives its errors.

        A producer's retry is recognised first, so that it succeeds even after the stream was
        closed or its Stream-Seq was passed; then a closed stream refuses, then a content type
        that does not match, then a Stream-Seq that does not increase.
        """
        if request.producer is not None:
            _check_length("Producer-Id", request.producer.producer_id, MAX_NAME_LENGTH)
        if request.stream_seq is not None:
            _check_length("Stream-Seq", request.stream_seq, MAX_NAME_LENGTH)
        self._check_message_sizes(request.messages)
        now = utcnow()
        claim = request.producer
        messages = request.messages
        with writing(self.engine) as conn:
            row = self._live_or_created(conn, path, now, request.create_if_missing)
            if row.ttl_seconds is not None:
                # Every write request is activity, even one that turns out to change nothing.
                conn.execute(update(streams).where(streams.c.id == row.id).values(touched_at=now))

            state = None
            if claim is not None:
                found = conn.execute(
                    _PRODUCER_STATE, {"stream_id": row.id, "producer_id": claim.producer_id}
                ).first()
                state = ProducerState(*found) if found is not None else None
                already_stored = _check_producer(claim, state, request.producer_count)
                if already_stored == request.producer_count:
                    assert state is not None
                    return AppendResult(row.info(), stored=False, producer_seq=state.last_seq)
                messages = messages[already_stored:]

            if row.closed:
                if request.close and not messages and claim is None:
                    return AppendResult(row.info(), stored=False)
                raise Conflict(
                    f"stream {path!r} is closed; it accepts no more appends",
                    headers=_closed_headers(row),
                )

            if (
                messages
                and request.content_type is not None
                and not same_content_type(row.content_type, request.content_type)
            ):
                raise Conflict(
                    f"Content-Type {request.content_type!r} does not match the stream's "
                    f"content type {row.content_type!r}"
                )

            if (
                request.stream_seq is not None
                and row.last_stream_seq is not None
                and request.stream_seq <= row.last_stream_seq
            ):
                raise Conflict(
                    f"Stream-Seq {request.stream_seq!r} is not greater than the last "
                    f"accepted Stream-Seq {row.last_stream_seq!r}"
                )

            added_bytes = sum(len(message) for message in messages)
            self._check_size(row.total_bytes + added_bytes)
            self._insert_messages(conn, row.id, row.next_position, messages, now)
            stored = replace(
                row,
                next_position=row.next_position + len(messages),
                total_bytes=row.total_bytes + added_bytes,
                touched_at=now,
                last_stream_seq=request.stream_seq or row.last_stream_seq,
                closed=row.closed or request.close,
            )
            conn.execute(
                _ADVANCE_STREAM,
                {
                    "match_id": row.id,
                    "next_position": stored.next_position,
                    "total_bytes": stored.total_bytes,
                    "touched_at": now,
                    "stream_seq": request.stream_seq,
                    "close": request.close,
                },
            )
            last_seq = None
            if claim is not None:
                last_seq = claim.seq + request.producer_count - 1
                self._save_producer(conn, row.id, claim.producer_id, claim.epoch, last_seq, now)
        return AppendResult(stored.info(), stored=True, producer_seq=last_seq)

    def _save_producer(
        self,
        conn: Connection,
        stream_id: int,
        producer_id: str,
        epoch: int,
        last_seq: int,
        now: datetime,
        *,
        writing: bool | None = None,
    ) -> None:
        """Record a producer's state, creating it on its first request."""
        values: dict[str, Any] = {"epoch": epoch, "last_seq": last_seq, "seen_at": now}
        if writing is not None:
            values["writing"] = writing
        updated = conn.execute(
            update(producers)
            .where(producers.c.stream_id == stream_id, producers.c.producer_id == producer_id)
            .values(values)
        )
        if updated.rowcount == 0:
            conn.execute(
                insert(producers).values(
                    {"writing": False, **values, "stream_id": stream_id, "producer_id": producer_id}
                )
            )

    # -- websocket writers -------------------------------------------------------------------

    def open_writer(
        self, path: str, writer_id: str, *, create_if_missing: CreateRequest | None = None
    ) -> int:
        """Register a writer that numbers its messages from 0 and may reconnect.

        Returns the number of its last message the stream holds (-1 for none), so that it
        resends only what is missing. Until :meth:`close_writer`, the writer counts as writing:
        see :meth:`close_unless_writing`. With ``create_if_missing``, a writer's hello is the
        stream's first write and creates it.
        """
        _check_length("the writer id", writer_id, MAX_NAME_LENGTH)
        now = utcnow()
        with writing(self.engine) as conn:
            row = self._live_or_created(conn, path, now, create_if_missing)
            found = conn.execute(
                _PRODUCER_STATE, {"stream_id": row.id, "producer_id": writer_id}
            ).first()
            state = ProducerState(*found) if found is not None else ProducerState(0, -1)
            self._save_producer(
                conn, row.id, writer_id, state.epoch, state.last_seq, now, writing=True
            )
        return state.last_seq

    def close_writer(self, path: str, writer_id: str) -> None:
        """The writer has sent everything it will: it no longer holds the stream open."""
        with writing(self.engine) as conn:
            row = self._live_row(conn, path, utcnow(), lock=True)
            conn.execute(
                update(producers)
                .where(producers.c.stream_id == row.id, producers.c.producer_id == writer_id)
                .values(writing=False)
            )

    def close_unless_writing(self, path: str, *, writer_timeout: float) -> bool:
        """Close the stream unless a writer is still writing to it; True if it is closed.

        A writer that has not been heard from for ``writer_timeout`` seconds is taken for gone.
        """
        now = utcnow()
        with writing(self.engine) as conn:
            row = self._live_row(conn, path, now, lock=True)
            if row.closed:
                return True
            still_writing = conn.execute(
                select(producers.c.producer_id)
                .where(
                    producers.c.stream_id == row.id,
                    producers.c.writing.is_(True),
                    producers.c.seen_at > now - timedelta(seconds=writer_timeout),
                )
                .limit(1)
            ).first()
            if still_writing is not None:
                return False
            conn.execute(update(streams).where(streams.c.id == row.id).values(closed=True))
        self.hub.publish(path)
        return True

    # -- read --------------------------------------------------------------------------------

    def head(self, path: str) -> StreamInfo:
        with reading(self.engine) as conn:
            return self._live_row(conn, path, utcnow()).info()

    def read(
        self, path: str, position: int | None, *, max_bytes: int, past_tail_ok: bool = False
    ) -> ReadResult:
        """Messages from ``position`` (None: the tail) up to about ``max_bytes``.

        At least one message is returned when one exists, however large. A position past the
        tail is a 400, unless ``past_tail_ok``: then there is nothing to read there *yet*.
        """
        now = utcnow()
        with reading(self.engine) as conn:
            row = self._live_row(conn, path, now)
            info = row.info()
            if position is None:
                position = row.next_position
            if position > row.next_position and not past_tail_ok:
                raise BadRequest(
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
        for stream_id, low, high in self._segments(conn, row):
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

    def _segments(self, conn: Connection, row: StreamRow) -> list[tuple[int, int, int | None]]:
        """The (stream id, first position, end position) ranges a stream's messages live in.

        A stream that is no fork keeps all its messages itself. A fork reads the positions below
        its fork position from its source, which may itself be a fork.
        """
        segments: list[tuple[int, int, int | None]] = []
        upper: int | None = None
        node: StreamRow | None = row
        while node is not None:
            low = node.fork_position if node.fork_source_id is not None else 0
            if upper is None or low < upper:
                segments.append((node.id, low, upper))
            upper = low if upper is None else min(upper, low)
            node = (
                self._row_by_id(conn, node.fork_source_id)
                if node.fork_source_id is not None and upper > 0
                else None
            )
        segments.reverse()
        return segments

    def _message_at(self, conn: Connection, row: StreamRow, position: int) -> bytes | None:
        for stream_id, low, high in self._segments(conn, row):
            if low <= position and (high is None or position < high):
                data = conn.execute(
                    select(chunks.c.data).where(
                        chunks.c.stream_id == stream_id, chunks.c.position == position
                    )
                ).scalar()
                return bytes(data) if data is not None else None
        return None

    def _bytes_before(self, conn: Connection, row: StreamRow, position: int) -> int:
        if position >= row.next_position:
            return int(row.total_bytes)
        total = 0
        for stream_id, low, high in self._segments(conn, row):
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

    def _touch(self, stream_id: int, now: datetime) -> None:
        """Restart a stream's sliding TTL window: reads count as activity."""
        with writing(self.engine) as conn:
            conn.execute(update(streams).where(streams.c.id == stream_id).values(touched_at=now))

    # -- delete and expiry -------------------------------------------------------------------

    def delete(self, path: str) -> None:
        """Delete a stream; one that forks still read from is soft-deleted instead."""
        with writing(self.engine) as conn:
            row = self._live_row(conn, path, utcnow(), lock=True)
            if self._has_forks(conn, row.id):
                conn.execute(update(streams).where(streams.c.id == row.id).values(deleted=True))
            else:
                self._remove(conn, row)
        self.hub.publish(path)

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove every expired stream (keeping the data forks still read); return how many."""
        now = now or utcnow()
        with reading(self.engine) as conn:
            candidates = (
                conn.execute(
                    select(streams.c.id).where(
                        streams.c.path.is_not(None),
                        streams.c.ttl_seconds.is_not(None)
                        | streams.c.expires_at.is_not(None)
                        | streams.c.retention_seconds.is_not(None),
                    )
                )
                .scalars()
                .all()
            )
        purged = []
        for stream_id in candidates:
            with writing(self.engine) as conn:
                row = self._row_by_id(conn, stream_id)
                if row is not None and row.path is not None and row.is_expired(now):
                    self._retire(conn, row)
                    purged.append(row.path)
        for path in purged:
            self.hub.publish(path)
        return len(purged)

    def _retire(self, conn: Connection, row: StreamRow) -> None:
        """Free an expired stream's path; keep its data only while forks read from it."""
        if self._has_forks(conn, row.id):
            conn.execute(
                update(streams).where(streams.c.id == row.id).values(path=None, deleted=True)
            )
        else:
            self._remove(conn, row)

    def _remove(self, conn: Connection, row: StreamRow) -> None:
        """Delete a stream's rows, then every source up the fork chain that only it kept alive."""
        node: StreamRow | None = row
        while node is not None:
            conn.execute(delete(chunks).where(chunks.c.stream_id == node.id))
            conn.execute(delete(producers).where(producers.c.stream_id == node.id))
            conn.execute(delete(streams).where(streams.c.id == node.id))
            source_id = node.fork_source_id
            node = None
            if source_id is not None:
                source = self._row_by_id(conn, source_id)
                if source is not None and source.deleted and not self._has_forks(conn, source_id):
                    node = source

    def _has_forks(self, conn: Connection, stream_id: int) -> bool:
        return (
            conn.execute(
                select(streams.c.id).where(streams.c.fork_source_id == stream_id).limit(1)
            ).first()
            is not None
        )

    # -- rows --------------------------------------------------------------------------------

    def _row(self, conn: Connection, path: str, *, lock: bool = False) -> StreamRow | None:
        if "\x00" in path:
            return None  # no stream can have it, and PostgreSQL cannot even compare it
        query = _STREAM_BY_PATH_FOR_UPDATE if lock else _STREAM_BY_PATH
        found = conn.execute(query, {"path": path}).first()
        return StreamRow(*found) if found is not None else None

    def _row_by_id(self, conn: Connection, stream_id: int) -> StreamRow:
        return StreamRow(
            *conn.execute(select(*StreamRow.columns()).where(streams.c.id == stream_id)).one()
        )

    def _live_or_created(
        self, conn: Connection, path: str, now: datetime, creation: CreateRequest | None
    ) -> StreamRow:
        """The live stream at ``path``, locked for writing; created from ``creation`` (when
        given) if there is none, in the caller's transaction."""
        row = self._row(conn, path, lock=True)
        if creation is not None and (row is None or (row.is_expired(now) and not row.deleted)):
            row = self._insert_stream(conn, path, creation, now, replacing=row)
        return _require_live(row, path, now)

    def _live_row(
        self, conn: Connection, path: str, now: datetime, *, lock: bool = False
    ) -> StreamRow:
        """The stream at ``path`` for a request: 404 if absent or expired, 410 if deleted."""
        return _require_live(self._row(conn, path, lock=lock), path, now)

    def _insert_messages(
        self,
        conn: Connection,
        stream_id: int,
        start: int,
        messages: Sequence[bytes],
        now: datetime,
    ) -> None:
        if messages:
            conn.execute(
                _INSERT_CHUNKS,
                [
                    {
                        "stream_id": stream_id,
                        "position": start + index,
                        "data": data,
                        "created_at": now,
                    }
                    for index, data in enumerate(messages)
                ],
            )

    def _check_message_sizes(self, messages: Sequence[bytes]) -> None:
        limit = self.max_message_bytes
        if limit is None:
            return
        for message in messages:
            if len(message) > limit:
                raise PayloadTooLarge(
                    f"a message of {len(message)} bytes is over the limit of {limit} bytes "
                    "per message; split it into smaller chunks"
                )

    def _check_size(self, total_bytes: int) -> None:
        if self.max_stream_bytes is not None and total_bytes > self.max_stream_bytes:
            raise PayloadTooLarge(
                f"the stream would hold {total_bytes} bytes, more than its limit of "
                f"{self.max_stream_bytes} bytes"
            )


def _check_producer(claim: ProducerClaim, state: ProducerState | None, count: int) -> int:
    """Validate a producer's epoch and sequence numbers against its stored state.

    The request carries sequence numbers ``claim.seq`` to ``claim.seq + count - 1``. Returns how
    many of them the stream already holds: ``count`` for a retry of a stored request, 0 for the
    next request; raises when the request is fenced off or leaves a gap.
    """
    if state is not None and claim.epoch < state.epoch:
        raise Forbidden(
            f"producer {claim.producer_id!r} is fenced: epoch {claim.epoch} is older than "
            f"the current epoch {state.epoch}",
            headers={"Producer-Epoch": str(state.epoch)},
        )
    if state is None or claim.epoch > state.epoch:
        if claim.seq == 0:
            return 0
        if state is None:
            raise Conflict(
                f"producer {claim.producer_id!r} is new here: its first Producer-Seq must be 0, "
                f"not {claim.seq}",
                headers={"Producer-Expected-Seq": "0", "Producer-Received-Seq": str(claim.seq)},
            )
        raise BadRequest(
            f"a new epoch ({claim.epoch}) must start at Producer-Seq 0, not {claim.seq}"
        )
    if claim.seq + count - 1 <= state.last_seq:
        return count
    if claim.seq > state.last_seq + 1:
        raise Conflict(
            f"Producer-Seq {claim.seq} skips ahead: the next expected is {state.last_seq + 1}",
            headers={
                "Producer-Expected-Seq": str(state.last_seq + 1),
                "Producer-Received-Seq": str(claim.seq),
            },
        )
    return state.last_seq + 1 - claim.seq


def _require_live(row: StreamRow | None, path: str, now: datetime) -> StreamRow:
    if row is None or row.is_expired(now):
        raise NotFound(f"stream {path!r} does not exist")
    if row.deleted:
        raise Gone(f"stream {path!r} has been deleted")
    return row


def _check_length(what: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise BadRequest(f"{what} is {len(value)} characters long; the limit is {limit}")


def _fork_offset(offset: str) -> str:
    """A requested Stream-Fork-Offset as the fork records it."""
    return offsets.encode(0) if offset == offsets.START else offset


def _closed_headers(row: StreamRow) -> dict[str, str]:
    return {"Stream-Closed": "true", "Stream-Next-Offset": offsets.encode(row.next_position)}
