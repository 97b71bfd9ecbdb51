"""The database schema, as SQLAlchemy 2.0 typed models.

The store reads and writes these tables through SQLAlchemy Core on its hot paths; the ORM classes
are the single definition of the schema, which Alembic migrations are checked against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every database.

    PostgreSQL keeps the zone; SQLite keeps none and hands back naive values, so values are
    stored as UTC and read back marked as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("Runstream stores aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Stream(Base):
    """A durable, append-only stream addressed by its path.

    ``next_position`` counts the messages the stream holds, counting those a fork inherits, so it
    is also the position the next appended message gets. A fork reads positions below
    ``fork_position`` from ``fork_source_id`` and stores only what is appended to it.
    """

    __tablename__ = "streams"
    # Never reuse the id of a deleted stream: ids appear in ETags.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's own attribute

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL once the stream is retired: expired or deleted while forks still read its data.
    path: Mapped[str | None] = mapped_column(String(1024), unique=True)
    content_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column()
    # The last read or write: the start of a sliding TTL window.
    touched_at: Mapped[datetime] = mapped_column()
    ttl_seconds: Mapped[int | None] = mapped_column(BigInteger)
    # The last append; a stream with a retention expires that long after it.
    written_at: Mapped[datetime] = mapped_column()
    retention_seconds: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column()
    next_position: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last Stream-Seq accepted; Stream-Seq is scoped to the stream.
    last_stream_seq: Mapped[str | None] = mapped_column(String(255))
    # A DELETE of a stream that forks still read from leaves it soft-deleted (410 Gone).
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    fork_source_id: Mapped[int | None] = mapped_column(
        ForeignKey("streams.id", ondelete="RESTRICT"), index=True
    )
    fork_position: Mapped[int] = mapped_column(BigInteger, default=0)
    # The Stream-Fork-Offset / Stream-Fork-Sub-Offset the fork was created with, so that a
    # repeated PUT can be recognised as the same request.
    fork_offset: Mapped[str | None] = mapped_column(String(64))
    fork_sub_offset: Mapped[int] = mapped_column(BigInteger, default=0)


class Chunk(Base):
    """One message of a stream: a JSON value in JSON mode, the body of one append otherwise."""

    __tablename__ = "chunks"

    stream_id: Mapped[int] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()


class Producer(Base):
    """Idempotent-producer state, committed in the same transaction as the append it allowed."""

    __tablename__ = "producers"

    stream_id: Mapped[int] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    producer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    # -1 for a writer that announced itself but has stored nothing yet.
    last_seq: Mapped[int] = mapped_column(BigInteger)
    # A websocket writer is "writing" from its hello until it says it has ended; a run's
    # stream is closed at the run's end only once no writer is still writing to it.
    writing: Mapped[bool] = mapped_column(Boolean, default=False)
    seen_at: Mapped[datetime | None] = mapped_column()


class Run(Base):
    """One execution of a task, the owner of any number of streams.

    Payload, output and error are JSON text. A root run is its own root; a child run has its
    parent's root.
    """

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_claim", "status", "task_id", "created_at"),
        Index("ix_runs_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    parent_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)
    root_run_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # The worker executing the run, and when it last said it is still at it.
    worker_id: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
