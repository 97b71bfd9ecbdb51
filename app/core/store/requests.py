"""What the store is asked to do, and what it answers: plain frozen dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .rows import StreamInfo


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
    # A limit per message lower than the store's own, for streams whose readers need one.
    max_message_bytes: int | None = None


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
    # A limit per message lower than the store's own, for streams whose readers need one.
    max_message_bytes: int | None = None

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


@dataclass(frozen=True)
class ReadPlan:
    """Which messages a read answers with, decided from their sizes before any is read: the
    positions ``start`` to ``end`` (excluded), ``size`` bytes in all, of the stream as it was."""

    stream: StreamInfo
    start: int
    end: int
    size: int

    @property
    def up_to_date(self) -> bool:
        return self.end >= self.stream.next_position

    @property
    def reached_end(self) -> bool:
        """True when the reader has everything and no more will ever come."""
        return self.stream.closed and self.up_to_date
