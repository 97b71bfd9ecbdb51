"""The PostgreSQL hub: a :class:`.SpanningHub` over ``LISTEN/NOTIFY``, for deployments on
PostgreSQL without Redis (two hosts need no third service).

Each process holds two connections of its own beside the engine's pool, both in autocommit:
one sends ``pg_notify`` for the publisher thread, one ``LISTEN``s for the listener thread. They
must reach PostgreSQL itself, or a pooler in session mode: a pooler in transaction mode hands
``LISTEN`` to a connection it gives to someone else.

A notification's payload is text shorter than 8,000 bytes, so messages travel in base64 and
commits carrying more than fits are sent by position only (their followers read the store).
"""

from __future__ import annotations

import base64
import time
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from .spanning_hub import PING_EVERY, POLL, RESYNC_INTERVAL, SOCKET_TIMEOUT, SpanningHub

CHANNEL = "runstream_commits"
# NOTIFY's payload limit is 8,000 bytes (less one); base64 makes 4 of every 3 bytes.
MAX_PAYLOAD = 7999
# TCP keepalives, and a limit on unacknowledged sends, so that a connection to a PostgreSQL that
# vanished fails within seconds instead of hanging the thread that uses it.
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": int(PING_EVERY),
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": int(3 * PING_EVERY * 1000),
}


class PostgresHub(SpanningHub):
    """A hub shared by every process that listens on ``channel`` in the database at ``url``
    (an SQLAlchemy or libpq URL: the same as ``RUNSTREAM_DATABASE_URL``)."""

    service = "PostgreSQL"
    errors = (psycopg.Error,)
    max_message_bytes = MAX_PAYLOAD // 4 * 3

    def __init__(
        self, url: str, *, channel: str = CHANNEL, resync_interval: float = RESYNC_INTERVAL
    ) -> None:
        libpq_url = make_url(url).set(drivername="postgresql")  # without SQLAlchemy's +driver
        self._conninfo = make_conninfo(
            libpq_url.render_as_string(hide_password=False),
            connect_timeout=int(SOCKET_TIMEOUT),
            **KEEPALIVE,
        )
        self._channel = channel
        self._sender: psycopg.Connection[tuple[object, ...]] | None = None
        super().__init__(url, resync_interval=resync_interval)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.Connection.connect(self._conninfo, autocommit=True)

    def _on_sender(self, query: LiteralString, *parameters: str) -> None:
        """Run ``query`` on the publisher's connection, opened anew after any failure."""
        if self._sender is None:
            self._sender = self._connect()
        try:
            self._sender.execute(query, parameters)
        except psycopg.Error:
            self._sender.close()
            self._sender = None
            raise

    def _send(self, message: bytes) -> None:
        payload = base64.b64encode(message).decode("ascii")
        self._on_sender("SELECT pg_notify(%s, %s)", self._channel, payload)

    def _check(self) -> None:
        self._on_sender("SELECT 1")

    def _listen(self) -> None:
        with self._connect() as connection:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self._listening_now()
            checked = time.monotonic()
            while not self._closing:
                for notification in connection.notifies(timeout=POLL):
                    self._notified(notification.payload)
                if time.monotonic() - checked >= PING_EVERY:
                    # Sends something, so that a dead connection fails (tcp_user_timeout).
                    connection.execute("SELECT 1")
                    checked = time.monotonic()

    def _notified(self, payload: str) -> None:
        try:
            message = base64.b64decode(payload, validate=True)
        except ValueError:  # binascii.Error included
            self._ignored()
            return
        self._received(message)

    def _close_transport(self) -> None:
        if self._sender is not None:
            self._sender.close()
