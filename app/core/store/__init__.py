"""The store: the one place where streams are created, appended to, read, closed and deleted.

Every change is one database transaction, so what a client was told succeeded is exactly what is
stored: the idempotent-producer check, the inserted messages and the stream's counters commit
together or not at all, and a retried append can never be stored twice. After a commit the store
publishes what it committed on the hub (:mod:`..hub`), which followers at the tail take.

Write transactions lock the stream's row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the
database-wide write lock, taken up front by ``BEGIN IMMEDIATE`` and queued in-process by a lock so
that waiting writers hand over in order instead of sleeping in SQLite's busy handler). A write that
waits longer than the busy timeout (:data:`~...db.engine.BUSY_TIMEOUT_SECONDS`) for either is
refused as :class:`~..errors.Busy`, a 503; reads never wait for it. Holding the
row lock serializes appends per stream, which is what gives each message its position and what
the protocol asks of idempotent producers.

The store is one class made of its concerns, each in its own module: :mod:`.creation` (streams
and forks), :mod:`.appends` (appends, producers, websocket writers), :mod:`.reads` and
:mod:`.retention` (deletes and expiry), over the rows and fork chains of :mod:`.rows`.
"""

from __future__ import annotations

from ..clock import utcnow
from .appends import Appends
from .reads import Reads
from .requests import (
    AppendRequest,
    AppendResult,
    CreateRequest,
    CreateResult,
    ForkRequest,
    ProducerClaim,
    ProducerState,
    ReadResult,
)
from .retention import Retention
from .rows import MAX_NAME_LENGTH, MAX_PATH_LENGTH, MAX_TTL_SECONDS, StreamInfo

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_TTL_SECONDS",
    "AppendRequest",
    "AppendResult",
    "CreateRequest",
    "CreateResult",
    "ForkRequest",
    "ProducerClaim",
    "ProducerState",
    "ReadResult",
    "Store",
    "StreamInfo",
    "utcnow",
]


class Store(Appends, Reads, Retention):
    """Streams in a database: see the module's documentation."""
