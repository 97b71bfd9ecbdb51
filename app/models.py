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
    Integer,
    LargeBinary,
    String,
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
    last_seq: Mapped[int] = mapped_column(BigInteger)
