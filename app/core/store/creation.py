"""Creating streams: plain ones, forks of other streams, and run streams on their first write.

Creating is idempotent: the same request again confirms the stream (``created=False``); a
request with another configuration is a conflict that names every difference.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from ...db import writing
from .. import offsets
from ..clock import utcnow
from ..content_types import is_json, same_content_type
from ..errors import Conflict, Invalid, NotFound
from ..hub import Commit
from .base import StoreBase
from .requests import CreateRequest, CreateResult
from .retention import retire
from .rows import (
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_TTL_SECONDS,
    StreamRow,
    bytes_before,
    check_length,
    check_message_count,
    find_row,
    insert_messages,
    message_at,
    require_live,
    row_by_id,
    streams,
)


class Creation(StoreBase):
    def create(self, path: str, request: CreateRequest) -> CreateResult:
        """Create the stream at ``path``, or confirm that the same stream already exists."""
        try:
            result = self._create(path, request)
        except IntegrityError:
            # Another writer created the path between our check and our insert (PostgreSQL,
            # where the check does not lock a row that does not exist yet): compare with theirs.
            result = self._create(path, request)
        if result.created:
            self.hub.publish(Commit.changed(path))
        return result

    def _create(self, path: str, request: CreateRequest) -> CreateResult:
        check_length("the stream path", path, MAX_PATH_LENGTH)
        check_message_count(request.messages)
        self._check_message_sizes(request.messages, request.max_message_bytes)
        if any(ord(character) < 0x20 or ord(character) == 0x7F for character in path):
            raise Invalid("a stream path must not contain control characters")
        check_length("Content-Type", request.content_type, MAX_NAME_LENGTH)
        if request.ttl_seconds is not None and not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            raise Invalid(
                f"Stream-TTL must be from 0 to {MAX_TTL_SECONDS} seconds (100 years), "
                f"not {request.ttl_seconds}"
            )
        now = utcnow()
        with writing(self.engine) as conn:
            existing = find_row(conn, path, lock=True)
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
            retire(conn, replacing)
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
        insert_messages(conn, stream_id, start, own_messages, now)
        return row_by_id(conn, stream_id)

    def _check_same_config(self, conn: Connection, row: StreamRow, request: CreateRequest) -> None:
        """Raise Conflict unless repeating ``request`` would create the stream ``row`` is."""
        fork = request.fork
        source = row_by_id(conn, row.fork_source_id) if row.fork_source_id is not None else None
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
        source = find_row(conn, fork.source_path, lock=True)
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
            raise Invalid(
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
            segment = message_at(conn, source, position)
            if is_json(source.content_type):
                if position + fork.sub_offset > source.next_position:
                    raise Invalid(
                        f"Stream-Fork-Sub-Offset {fork.sub_offset} is past the source's tail"
                    )
                position += fork.sub_offset
            else:
                if segment is None or fork.sub_offset > len(segment):
                    raise Invalid(
                        f"Stream-Fork-Sub-Offset {fork.sub_offset} is past the end of the "
                        "message at Stream-Fork-Offset"
                    )
                copied = [segment[: fork.sub_offset]]
        values["fork_position"] = position
        values["inherited_bytes"] = bytes_before(conn, source, position)
        return values, copied

    def _live_or_created(
        self, conn: Connection, path: str, now: datetime, creation: CreateRequest | None
    ) -> StreamRow:
        """The live stream at ``path``, locked for writing; created from ``creation`` (when
        given) if there is none, in the caller's transaction."""
        row = find_row(conn, path, lock=True)
        if creation is not None and (row is None or (row.is_expired(now) and not row.deleted)):
            row = self._insert_stream(conn, path, creation, now, replacing=row)
        return require_live(row, path, now)


def _fork_offset(offset: str) -> str:
    """A requested Stream-Fork-Offset as the fork records it."""
    return offsets.encode(0) if offset == offsets.START else offset
