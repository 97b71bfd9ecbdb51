"""The store against a small in-memory model of it, by hypothesis' stateful testing.

Random interleavings of creates (with initial messages, closed, with a TTL or an expiry),
appends (plain; by idempotent producers: next seq, retries, stale epochs, gaps, new epochs,
batches numbered per message; with Stream-Seq; closing), paged reads, heads, deletes, forks,
the clock moving past TTLs and expiry purges are sent to the store and to :class:`Model`,
and every answer (or error class, with its details) must be the same. After each step every
stream reads as the model says.

The model is the Durable Streams semantics the store documents, written as plainly as
possible: a stream is a list of messages, a closed flag, its producers' epoch and last seq,
and a TTL window; a fork copies its source up to the fork offset and then goes its own way.
It also keeps the rows the store keeps for forks (a deleted or expired source stays while a
fork reads it), since that decides whether a path is Gone, NotFound or free again.

Time is a fake clock that only a rule moves: the store's modules read it through the
``utcnow`` they import, which the test replaces. Runs on every database of the ``engine``
fixture; each example gets a fresh :class:`Store` and a path prefix of its own.
``RUNSTREAM_MODEL_EXAMPLES`` sets the examples per database for a longer run (PostgreSQL gets
half as many).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import pkgutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine

import runstream.server.core.clock as clock_module
import runstream.server.core.store as store_package
from runstream.server.core import offsets
from runstream.server.core.errors import (
    Conflict,
    Gone,
    Invalid,
    NotFound,
    ProducerFenced,
    RunstreamError,
    SequenceGap,
    StreamClosed,
)
from runstream.server.core.hub import InProcessHub
from runstream.server.core.store import (
    AppendRequest,
    CreateRequest,
    ForkRequest,
    ProducerClaim,
    ReadResult,
    Store,
    StreamInfo,
)

T = TypeVar("T")
U = TypeVar("U")

TEXT = "text/plain"
JSON = "application/json"
CONTENT_TYPES = [TEXT, JSON]
# What appends may say: nothing, the stream's type in another spelling, or another type.
APPEND_CONTENT_TYPES = [None, None, TEXT, "Text/Plain; charset=utf-8", JSON]
NAMES = ["a", "b", "c"]
PRODUCERS = ["p", "q"]
TTLS = [None, None, None, None, 0, 1, 5, 30]
EXPIRES_IN = [None, None, None, None, -1, 5, 30]  # seconds from now
# What draw_claim makes of a producer's state; "next" twice, for runs of accepted appends.
CLAIM_KINDS = [
    "none",
    "next",
    "next",
    "retry",
    "resend-tail",
    "stale",
    "gap",
    "new-epoch",
    "new-epoch-nonzero",
    "random",
]
STREAM_SEQS = [None, None, None, "1", "2", "3", "10"]
MESSAGES = st.lists(st.binary(max_size=4), max_size=3)
EVERYTHING = 1 << 30
# Past every TTL and expiry an example can set: the jump that ends the previous example's
# streams before the next one starts (the database is shared by the examples).
FAR_AHEAD = timedelta(days=1)


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# -- the clock -------------------------------------------------------------------------------


class FakeClock:
    """The time the store sees: it moves only when told."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def install_clock(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """Make every module of the store (each imports ``utcnow`` by name) read ``clock``."""
    monkeypatch.setattr(clock_module, "utcnow", clock)
    modules: list[Any] = [store_package]
    for found in pkgutil.iter_modules(store_package.__path__):
        modules.append(importlib.import_module(f"{store_package.__name__}.{found.name}"))
    for module in modules:
        if hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", clock)


# -- the model -------------------------------------------------------------------------------


@dataclass(eq=False)
class Row:
    """A stream as the database keeps it: live, expired, soft-deleted or retired (no path)."""

    path: str | None
    content_type: str
    messages: list[bytes]
    closed: bool
    ttl_seconds: int | None
    expires_at: datetime | None
    touched_at: datetime
    source: Row | None = None
    fork_offset: str | None = None
    fork_sub_offset: int = 0
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (epoch, last seq)
    last_stream_seq: str | None = None
    deleted: bool = False
    # The highest tail offset the store reported for this stream: offsets never go back.
    seen_offset: str = offsets.encode(0)

    def expired(self, now: datetime) -> bool:
        if self.expires_at is not None and self.expires_at <= now:
            return True
        return (
            self.ttl_seconds is not None
            and self.touched_at + timedelta(seconds=self.ttl_seconds) <= now
        )

    def touch(self, now: datetime) -> None:
        self.touched_at = now

    @property
    def total_bytes(self) -> int:
        return sum(map(len, self.messages))


@dataclass(frozen=True)
class Appended:
    stored: bool
    producer_seq: int | None


@dataclass(frozen=True)
class Read:
    messages: list[bytes]
    next_position: int
    tail: int
    closed: bool


class Model:
    """Streams as the protocol and the store's docstrings describe them.

    Each operation checks everything first and changes the model only when it succeeds, as
    the store's transactions do; it raises the store's own error classes.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rows: list[Row] = []  # every row the database holds, oldest first

    @property
    def now(self) -> datetime:
        return self.clock.now

    def find(self, path: str) -> Row | None:
        return next((row for row in self.rows if row.path == path), None)

    def live(self, path: str) -> Row:
        """NotFound when absent or expired (even if deleted), Gone when deleted."""
        row = self.find(path)
        if row is None or row.expired(self.now):
            raise NotFound(f"{path} does not exist")
        if row.deleted:
            raise Gone(f"{path} was deleted")
        return row

    def has_forks(self, row: Row) -> bool:
        return any(other.source is row for other in self.rows)

    def remove(self, row: Row) -> None:
        """Drop a row, then each deleted source up the chain that no other fork reads."""
        node: Row | None = row
        while node is not None:
            self.rows.remove(node)
            source, node = node.source, None
            if source is not None and source.deleted and not self.has_forks(source):
                node = source

    def retire(self, row: Row) -> None:
        """Free an expired stream's path; keep its row while forks read it."""
        if self.has_forks(row):
            row.path, row.deleted = None, True
        else:
            self.remove(row)

    # -- create ------------------------------------------------------------------------------

    def create(self, path: str, request: CreateRequest) -> tuple[bool, Row]:
        existing = self.find(path)
        if existing is not None:
            if existing.deleted:
                raise Conflict(f"{path} was deleted and is kept for its forks")
            if not existing.expired(self.now):
                self.check_same_config(existing, request)
                return False, existing
        new = self.new_row(path, request)
        if existing is not None:
            self.retire(existing)
        self.rows.append(new)
        return True, new

    def check_same_config(self, row: Row, request: CreateRequest) -> None:
        ttl, expires_at = request.ttl_seconds, request.expires_at
        if row.source is not None and ttl is None and expires_at is None:
            ttl, expires_at = row.source.ttl_seconds, row.source.expires_at
        fork = request.fork
        source_path = row.source.path if row.source is not None else None
        same = (
            (
                not request.content_type
                or media_type(request.content_type) == media_type(row.content_type)
            )
            and (row.ttl_seconds, row.expires_at, row.closed) == (ttl, expires_at, request.closed)
            and (fork.source_path if fork else None) == source_path
        )
        if same and fork is not None:
            offset = offsets.encode(0) if fork.offset == offsets.START else fork.offset
            same = (offset in (None, offsets.NOW) or offset == row.fork_offset) and (
                fork.sub_offset == row.fork_sub_offset
            )
        if not same:
            raise Conflict(f"{row.path} already exists with a different configuration")

    def new_row(self, path: str, request: CreateRequest) -> Row:
        """The stream a create makes (not yet stored): a fork copies its source's messages."""
        row = Row(
            path=path,
            content_type=request.content_type,
            messages=list(request.messages),
            closed=request.closed,
            ttl_seconds=request.ttl_seconds,
            expires_at=request.expires_at,
            touched_at=self.now,
        )
        fork = request.fork
        if fork is None:
            return row
        source = self.find(fork.source_path)
        if source is None or source.expired(self.now):
            raise NotFound(f"fork source {fork.source_path} does not exist")
        if source.deleted:
            raise Conflict(f"fork source {fork.source_path} has been deleted")
        if request.content_type and media_type(request.content_type) != media_type(
            source.content_type
        ):
            raise Conflict("a fork must have its source's content type")
        tail = len(source.messages)
        if fork.offset in (None, offsets.NOW):
            position = tail
        elif fork.offset == offsets.START:
            position = 0
        else:
            position = offsets.decode(fork.offset)
        if position > tail:
            raise Invalid("Stream-Fork-Offset is past the source's tail")
        row.fork_offset, row.fork_sub_offset = offsets.encode(position), fork.sub_offset
        copied: list[bytes] = []
        if fork.sub_offset and media_type(source.content_type) == JSON:
            # In a JSON stream a sub-offset counts messages.
            if position + fork.sub_offset > tail:
                raise Invalid("Stream-Fork-Sub-Offset is past the source's tail")
            position += fork.sub_offset
        elif fork.sub_offset:
            # Otherwise it counts bytes into the message at the offset: that prefix is copied.
            if position == tail or fork.sub_offset > len(source.messages[position]):
                raise Invalid("Stream-Fork-Sub-Offset is past the end of the message")
            copied = [source.messages[position][: fork.sub_offset]]
        row.source = source
        row.content_type = request.content_type or source.content_type
        row.messages = source.messages[:position] + copied + row.messages
        if request.ttl_seconds is None and request.expires_at is None:
            row.ttl_seconds, row.expires_at = source.ttl_seconds, source.expires_at
        return row

    # -- append ------------------------------------------------------------------------------

    def append(self, path: str, request: AppendRequest) -> Appended:
        """The protocol's order: producer (so a retry succeeds even on a closed stream), then
        closed, then content type, then Stream-Seq."""
        row = self.live(path)
        messages = list(request.messages)
        claim = request.producer
        count = max(1, len(messages)) if request.seq_per_message else 1
        if claim is not None:
            state = row.producers.get(claim.producer_id)
            if state is not None and claim.epoch < state[0]:
                raise ProducerFenced("stale epoch", current_epoch=state[0])
            if state is None or claim.epoch > state[0]:
                if claim.seq != 0:
                    if state is None:
                        raise SequenceGap("new producer", expected=0, received=claim.seq)
                    raise Invalid("a new epoch must start at Producer-Seq 0")
                already = 0
            else:
                last_seq = state[1]
                if claim.seq + count - 1 <= last_seq:
                    row.touch(self.now)  # a retry: acknowledged, nothing stored again
                    return Appended(stored=False, producer_seq=last_seq)
                if claim.seq > last_seq + 1:
                    raise SequenceGap("gap", expected=last_seq + 1, received=claim.seq)
                already = last_seq + 1 - claim.seq  # a batch resent partly stored
            messages = messages[already:]
        if row.closed:
            if request.close and not messages and claim is None:
                row.touch(self.now)
                return Appended(stored=False, producer_seq=None)
            raise StreamClosed("closed", next_position=len(row.messages))
        if (
            messages
            and request.content_type is not None
            and media_type(request.content_type) != media_type(row.content_type)
        ):
            raise Conflict("Content-Type does not match")
        if (
            request.stream_seq is not None
            and row.last_stream_seq is not None
            and request.stream_seq <= row.last_stream_seq
        ):
            raise Conflict("Stream-Seq does not increase")
        row.messages += messages
        row.closed = row.closed or request.close
        if request.stream_seq is not None:
            row.last_stream_seq = request.stream_seq
        row.touch(self.now)
        producer_seq = None
        if claim is not None:
            producer_seq = claim.seq + count - 1
            row.producers[claim.producer_id] = (claim.epoch, producer_seq)
        return Appended(stored=True, producer_seq=producer_seq)

    # -- read, delete, purge -----------------------------------------------------------------

    def read(self, path: str, position: int | None, max_bytes: int) -> Read:
        """At least one message when there is one, then as many as fit in ``max_bytes``."""
        row = self.live(path)
        tail = len(row.messages)
        position = tail if position is None else position
        if position > tail:
            raise Invalid("past the stream's tail")
        taken: list[bytes] = []
        for message in row.messages[position:]:
            if taken and sum(map(len, taken)) + len(message) > max_bytes:
                break
            taken.append(message)
        row.touch(self.now)
        return Read(taken, position + len(taken), tail, row.closed)

    def delete(self, path: str) -> None:
        row = self.live(path)
        if self.has_forks(row):
            row.deleted = True
        else:
            self.remove(row)

    def purge_expired(self) -> int:
        """Retire every expired stream that still has a path, oldest first."""
        expired = [
            row
            for row in self.rows
            if row.path is not None
            and (row.ttl_seconds is not None or row.expires_at is not None)
            and row.expired(self.now)
        ]
        for row in expired:
            if row in self.rows:
                self.retire(row)
        return len(expired)


# -- the store beside the model --------------------------------------------------------------

# The details a refusal carries, which the store's must share with the model's.
DETAILS: dict[type[RunstreamError], tuple[str, ...]] = {
    StreamClosed: ("next_position",),
    ProducerFenced: ("current_epoch",),
    SequenceGap: ("expected", "received"),
}


def both(model: Callable[[], T], store: Callable[[], U]) -> tuple[T, U] | None:
    """One operation on the model and on the store: both answer (the two answers), or both
    refuse with the same error class and details (None)."""
    try:
        expected = model()
    except RunstreamError as refusal:
        with pytest.raises(RunstreamError) as raised:
            store()
        assert type(raised.value) is type(refusal), (raised.value, refusal)
        for name in DETAILS.get(type(refusal), ()):
            assert getattr(raised.value, name) == getattr(refusal, name), name
        return None
    return expected, store()


def check_info(info: StreamInfo, row: Row) -> None:
    """The stream as the store describes it is the model's; its tail offset never goes back."""
    assert media_type(info.content_type) == media_type(row.content_type)
    assert info.next_position == len(row.messages)
    assert info.total_bytes == row.total_bytes
    assert info.closed == row.closed
    assert info.ttl_seconds == row.ttl_seconds
    assert info.expires_at == row.expires_at
    assert info.next_offset >= row.seen_offset, "the stream's tail offset went back"
    row.seen_offset = info.next_offset


class StoreMachine(RuleBasedStateMachine):
    """One example: a fresh store over the shared database, with paths of its own."""

    def __init__(self, engine: Engine, clock: FakeClock, prefix: str) -> None:
        super().__init__()
        # The previous example's streams expire and are purged before this one starts, so
        # that purge counts here are this example's own.
        clock.now += FAR_AHEAD
        self.store = Store(engine, InProcessHub())
        self.store.purge_expired()
        self.clock = clock
        self.started = clock.now
        self.model = Model(clock)
        self.prefix = prefix

    def teardown(self) -> None:
        """Leave nothing behind for the next example's purges: with the clock set back to
        before this example (nothing has expired then), delete every stream, newest first
        (forks before their sources, which then go with them)."""
        now, self.clock.now = self.clock.now, self.started - timedelta(hours=1)
        for row in reversed(self.model.rows):
            if row.path is not None and not row.deleted:
                with contextlib.suppress(RunstreamError):
                    self.store.delete(row.path)
        self.clock.now = now

    def path(self, name: str) -> str:
        return self.prefix + name

    def target(self, data: st.DataObject, label: str = "name", *, live: bool = True) -> str:
        """A name, most often one of a stream that is there to work on (``live``), or else
        one that is free."""
        preferred = [name for name in NAMES if self.is_live(self.path(name)) == live]
        if preferred and data.draw(st.integers(0, 9), label=f"{label} is preferred") < 8:
            return data.draw(st.sampled_from(preferred), label=label)
        return data.draw(st.sampled_from(NAMES), label=label)

    def is_live(self, path: str) -> bool:
        row = self.model.find(path)
        return row is not None and not row.deleted and not row.expired(self.clock.now)

    @initialize(name=st.sampled_from(NAMES), messages=MESSAGES)
    def first_stream(self, name: str, messages: list[bytes]) -> None:
        """Most examples are more interesting with a stream to start from."""
        self.create(name, TEXT, messages, False, None, None)

    # -- create and fork ---------------------------------------------------------------------

    @rule(
        name=st.sampled_from(NAMES),
        content_type=st.sampled_from(CONTENT_TYPES),
        messages=MESSAGES,
        closed=st.sampled_from([False, False, False, True]),
        ttl=st.sampled_from(TTLS),
        expires_in=st.sampled_from(EXPIRES_IN),
    )
    def create(
        self,
        name: str,
        content_type: str,
        messages: list[bytes],
        closed: bool,
        ttl: int | None,
        expires_in: int | None,
    ) -> None:
        if ttl is not None and expires_in is not None:
            expires_in = None  # one of the two, as the protocol allows
        expires_at = None if expires_in is None else self.clock.now + timedelta(seconds=expires_in)
        request = CreateRequest(
            content_type, messages=messages, closed=closed, ttl_seconds=ttl, expires_at=expires_at
        )
        self.check_create(name, request)

    @rule(data=st.data())
    def repeat_create(self, data: st.DataObject) -> None:
        """The same create again (as the stream was made, if it was made by a plain create):
        idempotent while it matches, a Conflict once it does not (closed since, say)."""
        name = self.target(data)
        row = self.model.find(self.path(name))
        if row is None or row.source is not None:
            return
        request = CreateRequest(
            row.content_type,
            messages=[b"ignored"],
            closed=row.closed,
            ttl_seconds=row.ttl_seconds,
            expires_at=row.expires_at,
        )
        self.check_create(name, request)

    @rule(
        content_type=st.sampled_from(["", "", TEXT, JSON]),
        messages=st.lists(st.binary(max_size=3), max_size=1),
        ttl=st.sampled_from(TTLS),
        closed=st.sampled_from([False, False, False, True]),
        data=st.data(),
    )
    def fork(
        self,
        content_type: str,
        messages: list[bytes],
        ttl: int | None,
        closed: bool,
        data: st.DataObject,
    ) -> None:
        """A fork at the tail, the start, a random position (sometimes past the tail), with a
        sub-offset now and then."""
        source = self.target(data, "source")
        name = self.target(data, "fork", live=False)
        row = self.model.find(self.path(source))
        tail = len(row.messages) if row is not None else 0
        offset = data.draw(
            st.one_of(
                st.sampled_from([None, offsets.NOW, offsets.START]),
                st.integers(0, tail + 1).map(offsets.encode),
            ),
            label="offset",
        )
        sub_offset = data.draw(st.sampled_from([0, 0, 0, 1, 2, 5]), label="sub_offset")
        request = CreateRequest(
            content_type,
            messages=messages,
            ttl_seconds=ttl,
            closed=closed,
            fork=ForkRequest(self.path(source), offset, sub_offset),
        )
        self.check_create(name, request)
        self.check_create(name, request)  # the same fork again: created=False

    def check_create(self, name: str, request: CreateRequest) -> None:
        path = self.path(name)
        outcome = both(
            lambda: self.model.create(path, request), lambda: self.store.create(path, request)
        )
        if outcome is not None:
            (created, row), result = outcome
            assert result.created == created
            check_info(result.stream, row)

    # -- append and close --------------------------------------------------------------------

    def draw_claim(self, data: st.DataObject, name: str, count: int) -> ProducerClaim | None:
        """A producer claim, mostly of a kind the model's state makes interesting."""
        row = self.model.find(self.path(name))
        producer = data.draw(st.sampled_from(PRODUCERS), label="producer")
        state = row.producers.get(producer) if row is not None else None
        epoch, last = state if state is not None else (0, -1)
        kind = data.draw(st.sampled_from(CLAIM_KINDS), label="claim")
        seq: int
        if kind == "none":
            return None
        elif kind == "next":
            seq = last + 1
        elif kind == "retry":  # the last request again: all its seqs are stored
            seq = max(0, last - count + 1)
        elif kind == "resend-tail":  # a batch whose first message is stored, the rest not
            seq = max(0, last)
        elif kind == "stale":
            epoch, seq = epoch - 1, last + 1
        elif kind == "gap":
            seq = last + data.draw(st.integers(2, 3), label="gap")
        elif kind == "new-epoch":
            epoch, seq = epoch + 1, 0
        elif kind == "new-epoch-nonzero":
            epoch, seq = epoch + 1, data.draw(st.integers(1, 2), label="seq")
        else:
            epoch = data.draw(st.integers(0, 3), label="epoch")
            seq = data.draw(st.integers(0, 4), label="seq")
        return ProducerClaim(producer, max(0, epoch), seq)

    @rule(
        messages=MESSAGES,
        close=st.sampled_from([False, False, False, True]),
        content_type=st.sampled_from(APPEND_CONTENT_TYPES),
        stream_seq=st.sampled_from(STREAM_SEQS),
        seq_per_message=st.booleans(),
        data=st.data(),
    )
    def append(
        self,
        messages: list[bytes],
        close: bool,
        content_type: str | None,
        stream_seq: str | None,
        seq_per_message: bool,
        data: st.DataObject,
    ) -> None:
        name = self.target(data)
        if not messages and not close:
            messages = [b"x"]
        claim = self.draw_claim(data, name, max(1, len(messages)) if seq_per_message else 1)
        request = AppendRequest(
            messages,
            content_type=content_type,
            producer=claim,
            seq_per_message=seq_per_message and claim is not None,
            stream_seq=stream_seq,
            close=close,
        )
        self.check_append(name, request)

    @rule(data=st.data())
    def retry_last_append(self, data: st.DataObject) -> None:
        """A producer resends its last request (same epoch, same seq, same body, same close):
        recognised, acknowledged with stored=False, nothing stored twice, even when that
        request closed the stream."""
        name = self.target(data)
        row = self.model.find(self.path(name))
        if row is None or not row.producers:
            return
        producer = data.draw(st.sampled_from(sorted(row.producers)), label="producer")
        epoch, last = row.producers[producer]
        request = AppendRequest(
            [b"again"],
            producer=ProducerClaim(producer, epoch, last),
            close=data.draw(st.booleans(), label="close"),
        )
        self.check_append(name, request)

    @rule(messages=st.lists(st.binary(max_size=2), max_size=2), data=st.data())
    def close(self, messages: list[bytes], data: st.DataObject) -> None:
        """Close, with or without a final message; a close-only of a closed stream is fine."""
        name = self.target(data)
        self.check_append(name, AppendRequest(messages, close=True))

    def check_append(self, name: str, request: AppendRequest) -> None:
        path = self.path(name)
        before = self.model.find(path)
        tail_before = len(before.messages) if before is not None else 0
        outcome = both(
            lambda: self.model.append(path, request), lambda: self.store.append(path, request)
        )
        if outcome is None:
            return
        expected, result = outcome
        assert (result.stored, result.producer_seq) == (expected.stored, expected.producer_seq)
        row = self.model.live(path)
        check_info(result.stream, row)
        if len(row.messages) > tail_before:
            assert result.stream.next_offset > offsets.encode(tail_before)

    # -- reads -------------------------------------------------------------------------------

    @rule(max_bytes=st.integers(1, 12), data=st.data())
    def read(self, max_bytes: int, data: st.DataObject) -> None:
        """A read from anywhere (the tail, past it) returns exactly the model's page."""
        name = self.target(data)
        row = self.model.find(self.path(name))
        tail = len(row.messages) if row is not None else 0
        position = data.draw(st.none() | st.integers(0, tail + 1), label="position")
        self.check_read(name, position, max_bytes)

    @rule(max_bytes=st.integers(1, 12), data=st.data())
    def read_in_pages(self, max_bytes: int, data: st.DataObject) -> None:
        """Page through a whole stream: pages reassemble it, offsets strictly increase."""
        name = self.target(data)
        position, last_offset = 0, None
        while True:
            result = self.check_read(name, position, max_bytes)
            if result is None or not result.messages:
                return
            offset = offsets.encode(result.next_position)
            assert last_offset is None or offset > last_offset
            position, last_offset = result.next_position, offset

    def check_read(self, name: str, position: int | None, max_bytes: int) -> ReadResult | None:
        path = self.path(name)
        outcome = both(
            lambda: self.model.read(path, position, max_bytes),
            lambda: self.store.read(path, position, max_bytes=max_bytes),
        )
        if outcome is None:
            return None
        expected, result = outcome
        assert result.messages == expected.messages
        assert result.next_position == expected.next_position
        assert result.up_to_date == (expected.next_position == expected.tail)
        assert result.reached_end == (expected.closed and expected.next_position == expected.tail)
        if expected.next_position < expected.tail:
            assert result.messages, "a read short of the tail returns at least one message"
        check_info(result.stream, self.model.live(path))
        return result

    @rule(data=st.data())
    def head(self, data: st.DataObject) -> None:
        path = self.path(self.target(data))
        outcome = both(lambda: self.model.live(path), lambda: self.store.head(path))
        if outcome is not None:
            row, info = outcome
            check_info(info, row)

    # -- delete, time, expiry ----------------------------------------------------------------

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        """A delete, as often as not of a stream that forks read (a soft delete)."""
        sources = [
            name
            for name in NAMES
            if self.is_live(self.path(name))
            and self.model.has_forks(self.model.live(self.path(name)))
        ]
        of_a_source = data.draw(st.booleans(), label="a source")
        if sources and of_a_source:
            path = self.path(data.draw(st.sampled_from(sources), label="name"))
        else:
            path = self.path(self.target(data))
        both(lambda: self.model.delete(path), lambda: self.store.delete(path))

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5, 29, 31, 61]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def purge_expired(self) -> None:
        outcome = both(self.model.purge_expired, self.store.purge_expired)
        assert outcome is not None
        expected, purged = outcome
        assert purged == expected

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_stream_is_as_the_model_says(self) -> None:
        """Every path answers HEAD as the model says; every stream without a TTL (reading one
        with a TTL renews it, which only the rules may do) reads exactly its messages."""
        for name in NAMES:
            path = self.path(name)
            outcome = both(
                lambda path=path: self.model.live(path),  # type: ignore[misc]
                lambda path=path: self.store.head(path),  # type: ignore[misc]
            )
            if outcome is None:
                continue
            row, info = outcome
            check_info(info, row)
            if row.ttl_seconds is None:
                result = self.store.read(path, 0, max_bytes=EVERYTHING)
                assert result.messages == row.messages


# -- the tests -------------------------------------------------------------------------------


def model_settings(engine: Engine) -> settings:
    """Bounded for CI (100 examples of up to 30 steps on SQLite, half on PostgreSQL);
    RUNSTREAM_MODEL_EXAMPLES asks for more. No example database: nothing is written to the
    work tree."""
    examples = int(os.environ.get("RUNSTREAM_MODEL_EXAMPLES") or 100)
    if engine.dialect.name == "postgresql":
        examples = max(1, examples // 2)
    return settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        database=None,
    )


def test_store_behaves_like_the_model(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    install_clock(monkeypatch, clock)
    run = uuid.uuid4().hex[:8]
    numbers = itertools.count()

    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: StoreMachine(engine, clock, f"model/{run}/{next(numbers)}/"),
        settings=model_settings(engine),
    )


# -- what the model found --------------------------------------------------------------------


def test_purge_survives_a_deleted_source_that_its_last_fork_takes_along(store: Store) -> None:
    """A source deleted while a fork reads it is kept, soft-deleted, with its path and TTL.
    When the purge removes the expired fork, the source goes with it (nothing reads it any
    more); the purge must then not trip over the source, which it listed as a candidate
    before. (PostgreSQL listed candidates in heap order, where the delete's UPDATE had moved
    the source's row after the fork's: the purge raised NoResultFound.)"""
    store.create("src", CreateRequest(TEXT, messages=[b"a"], ttl_seconds=3600))
    store.create("fork", CreateRequest("", ttl_seconds=1, fork=ForkRequest("src")))
    store.delete("src")  # soft: the fork still reads it

    assert store.purge_expired(now=datetime.now(UTC) + timedelta(seconds=2)) == 1

    for path in ("src", "fork"):
        with pytest.raises(NotFound):
            store.head(path)
    assert store.create("src", CreateRequest(TEXT)).created is True
