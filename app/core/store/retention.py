"""Deleting streams and letting them expire, keeping the data that forks still read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, select, update

from ...db import reading, writing
from ..clock import utcnow
from ..hub import Commit
from .base import StoreBase
from .rows import StreamRow, chunks, existing_row_by_id, has_forks, live_row, producers, streams


class Retention(StoreBase):
    def delete(self, path: str) -> None:
        """Delete a stream; one that forks still read from is soft-deleted instead."""
        with writing(self.engine) as conn:
            row = live_row(conn, path, utcnow(), lock=True)
            if has_forks(conn, row.id):
                conn.execute(update(streams).where(streams.c.id == row.id).values(deleted=True))
            else:
                remove(conn, row)
        self.hub.publish(Commit.changed(path, gone=True))

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove every expired stream (keeping the data forks still read); return how many."""
        now = now or utcnow()
        with reading(self.engine) as conn:
            candidates = (
                conn.execute(
                    select(streams.c.id)
                    .where(
                        streams.c.path.is_not(None),
                        streams.c.ttl_seconds.is_not(None)
                        | streams.c.expires_at.is_not(None)
                        | streams.c.retention_seconds.is_not(None),
                    )
                    # Oldest first, whatever order the database keeps rows in: a source before
                    # its forks, so that each expired stream is counted once, on any database.
                    .order_by(streams.c.id)
                )
                .scalars()
                .all()
            )
        purged = []
        for stream_id in candidates:
            with writing(self.engine) as conn:
                # None when an earlier candidate's removal took this one along (a deleted
                # source that only that fork kept).
                row = existing_row_by_id(conn, stream_id)
                if row is not None and row.path is not None and row.is_expired(now):
                    retire(conn, row)
                    purged.append(row.path)
        for path in purged:
            self.hub.publish(Commit.changed(path, gone=True))
        return len(purged)


def retire(conn: Connection, row: StreamRow) -> None:
    """Free an expired stream's path; keep its data only while forks read from it."""
    if has_forks(conn, row.id):
        conn.execute(update(streams).where(streams.c.id == row.id).values(path=None, deleted=True))
    else:
        remove(conn, row)


def remove(conn: Connection, row: StreamRow) -> None:
    """Delete a stream's rows, then every source up the fork chain that only it kept alive."""
    node: StreamRow | None = row
    while node is not None:
        conn.execute(delete(chunks).where(chunks.c.stream_id == node.id))
        conn.execute(delete(producers).where(producers.c.stream_id == node.id))
        conn.execute(delete(streams).where(streams.c.id == node.id))
        source_id = node.fork_source_id
        node = None
        if source_id is not None:
            source = existing_row_by_id(conn, source_id)
            if source is not None and source.deleted and not has_forks(conn, source_id):
                node = source
