"""Appending: messages, closes, idempotent producers and websocket writers.

Each append is one transaction that locks the stream's row, checks the producer, inserts the
messages and advances the stream's counters, so a retried append can never be stored twice and
what a client was told is stored is exactly what is. The commit is published on the hub after
the transaction ends.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ...db import writing
from ..clock import utcnow
from ..content_types import same_content_type
from ..errors import Conflict, Invalid, ProducerFenced, SequenceGap, StreamClosed
from ..hub import Commit
from .creation import Creation
from .requests import AppendRequest, AppendResult, CreateRequest, ProducerClaim, ProducerState
from .rows import (
    ADVANCE_STREAM,
    MAX_NAME_LENGTH,
    PRODUCER_STATE,
    check_length,
    check_message_count,
    insert_messages,
    live_row,
    producers,
    streams,
)

# A producer's state after each of its appends, built once (see rows.py).
UPDATE_PRODUCER = (
    update(producers)
    .where(
        producers.c.stream_id == bindparam("match_stream_id"),
        producers.c.producer_id == bindparam("match_producer_id"),
    )
    .values(epoch=bindparam("epoch"), last_seq=bindparam("last_seq"), seen_at=bindparam("seen_at"))
)
UPDATE_WRITER = UPDATE_PRODUCER.values(writing=bindparam("writing"))
INSERT_PRODUCER = insert(producers)


class Appends(Creation):
    def append(self, path: str, request: AppendRequest) -> AppendResult:
        """Append messages (and/or close the stream), exactly once per producer request."""
        try:
            result, commit = self._append(path, request)
        except IntegrityError:
            # Another writer created the stream between our look and our insert (PostgreSQL,
            # where the look locks no row that does not exist yet): append to theirs.
            result, commit = self._append(path, request)
        if commit is not None:
            self.hub.publish(commit)
        return result

    def _append(self, path: str, request: AppendRequest) -> tuple[AppendResult, Commit | None]:
        """Validate and store one append, in the order the protocol gives its errors.

        A producer's retry is recognised first, so that it succeeds even after the stream was
        closed or its Stream-Seq was passed; then a closed stream refuses, then a content type
        that does not match, then a Stream-Seq that does not increase.
        """
        if request.producer is not None:
            check_length("Producer-Id", request.producer.producer_id, MAX_NAME_LENGTH)
        if request.stream_seq is not None:
            check_length("Stream-Seq", request.stream_seq, MAX_NAME_LENGTH)
        check_message_count(request.messages)
        self._check_message_sizes(request.messages, request.max_message_bytes)
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
                    PRODUCER_STATE, {"stream_id": row.id, "producer_id": claim.producer_id}
                ).first()
                state = ProducerState(*found) if found is not None else None
                already_stored = check_producer(claim, state, request.producer_count)
                if already_stored == request.producer_count:
                    assert state is not None
                    return (
                        AppendResult(row.info(), stored=False, producer_seq=state.last_seq),
                        None,
                    )
                messages = messages[already_stored:]

            if row.closed:
                if request.close and not messages and claim is None:
                    return AppendResult(row.info(), stored=False), None
                raise StreamClosed(
                    f"stream {path!r} is closed; it accepts no more appends",
                    next_position=row.next_position,
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
            insert_messages(conn, row.id, row.next_position, messages, now)
            stored = replace(
                row,
                next_position=row.next_position + len(messages),
                total_bytes=row.total_bytes + added_bytes,
                touched_at=now,
                last_stream_seq=request.stream_seq or row.last_stream_seq,
                closed=row.closed or request.close,
            )
            conn.execute(
                ADVANCE_STREAM,
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
        commit = Commit.appended(path, row.next_position, messages, closed=stored.closed)
        return AppendResult(stored.info(), stored=True, producer_seq=last_seq), commit

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
        keys = {"match_stream_id": stream_id, "match_producer_id": producer_id}
        updated = conn.execute(UPDATE_PRODUCER if writing is None else UPDATE_WRITER, values | keys)
        if updated.rowcount == 0:
            conn.execute(
                INSERT_PRODUCER,
                {"writing": False, **values, "stream_id": stream_id, "producer_id": producer_id},
            )

    # -- websocket writers -------------------------------------------------------------------

    def open_writer(
        self, path: str, writer_id: str, *, create_if_missing: CreateRequest | None = None
    ) -> ProducerState:
        """Start a session of a writer that numbers its messages from 0 and may reconnect.

        Each session takes the writer's next epoch, so that a connection of an older session
        that still writes is fenced off (:class:`ProducerFenced`) by the store itself, in any
        process; its numbering goes on where it stopped. Returns the session's epoch and the
        number of the writer's last message the stream holds (-1 for none), so that it resends
        only what is missing. Until :meth:`close_writer`, the writer counts as writing: see
        :meth:`close_unless_writing`. With ``create_if_missing``, a writer's hello is the
        stream's first write and creates it.
        """
        check_length("the writer id", writer_id, MAX_NAME_LENGTH)
        try:
            return self._open_writer(path, writer_id, create_if_missing)
        except IntegrityError:
            # Another writer's hello created the stream between our look and our insert
            # (PostgreSQL, as in append): open the session on theirs.
            return self._open_writer(path, writer_id, create_if_missing)

    def _open_writer(
        self, path: str, writer_id: str, create_if_missing: CreateRequest | None
    ) -> ProducerState:
        now = utcnow()
        with writing(self.engine) as conn:
            row = self._live_or_created(conn, path, now, create_if_missing)
            found = conn.execute(
                PRODUCER_STATE, {"stream_id": row.id, "producer_id": writer_id}
            ).first()
            session = ProducerState(found[0] + 1, found[1]) if found else ProducerState(0, -1)
            self._save_producer(
                conn, row.id, writer_id, session.epoch, session.last_seq, now, writing=True
            )
        return session

    def keep_writer(self, path: str, writer_id: str, epoch: int) -> None:
        """A quiet writer's session is still there: it keeps holding its stream open."""
        with writing(self.engine) as conn:
            row = live_row(conn, path, utcnow(), lock=True)
            found = conn.execute(
                PRODUCER_STATE, {"stream_id": row.id, "producer_id": writer_id}
            ).first()
            if found is None or found[0] != epoch:
                raise ProducerFenced(
                    f"writer {writer_id!r} was taken over by a newer connection",
                    current_epoch=found[0] if found else epoch,
                )
            conn.execute(
                update(producers)
                .where(producers.c.stream_id == row.id, producers.c.producer_id == writer_id)
                .values(seen_at=utcnow(), writing=True)
            )

    def close_writer(self, path: str, writer_id: str) -> None:
        """The writer has sent everything it will: it no longer holds the stream open."""
        with writing(self.engine) as conn:
            row = live_row(conn, path, utcnow(), lock=True)
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
            row = live_row(conn, path, now, lock=True)
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
        self.hub.publish(Commit.appended(path, row.next_position, (), closed=True))
        return True


def check_producer(claim: ProducerClaim, state: ProducerState | None, count: int) -> int:
    """Validate a producer's epoch and sequence numbers against its stored state.

    The request carries sequence numbers ``claim.seq`` to ``claim.seq + count - 1``. Returns how
    many of them the stream already holds: ``count`` for a retry of a stored request, 0 for the
    next request; raises when the request is fenced off or leaves a gap.
    """
    if state is not None and claim.epoch < state.epoch:
        raise ProducerFenced(
            f"producer {claim.producer_id!r} is fenced: epoch {claim.epoch} is older than "
            f"the current epoch {state.epoch}",
            current_epoch=state.epoch,
        )
    if state is None or claim.epoch > state.epoch:
        if claim.seq == 0:
            return 0
        if state is None:
            raise SequenceGap(
                f"producer {claim.producer_id!r} is new here: its first Producer-Seq must be 0, "
                f"not {claim.seq}",
                expected=0,
                received=claim.seq,
            )
        raise Invalid(f"a new epoch ({claim.epoch}) must start at Producer-Seq 0, not {claim.seq}")
    if claim.seq + count - 1 <= state.last_seq:
        return count
    if claim.seq > state.last_seq + 1:
        raise SequenceGap(
            f"Producer-Seq {claim.seq} skips ahead: the next expected is {state.last_seq + 1}",
            expected=state.last_seq + 1,
            received=claim.seq,
        )
    return state.last_seq + 1 - claim.seq
