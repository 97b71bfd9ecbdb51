"""Runstream settings.

Settings are read from ``RUNSTREAM_*`` environment variables (values that parse as JSON are
converted, so ``RUNSTREAM_LONG_POLL_TIMEOUT=5`` is the number 5) and may be overridden by the
mapping given to :func:`runstream.server.create_app`. Every setting has a default that works on
a fresh machine.

The instance folder holds what a server keeps on its own disk: the SQLite file and the secret
key. It is ``RUNSTREAM_INSTANCE_PATH``, or ``instance/`` in the working directory: never a folder
inside the installed package, which may be read-only and is replaced by every upgrade.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .runs.auth import check_secret_key

DEFAULTS: dict[str, Any] = {
    # Where streams are stored. Empty means an SQLite file in the Flask instance folder.
    "DATABASE_URL": "",
    # The most connections the database pool holds (0: 100 for SQLite, 50 for PostgreSQL), and
    # how long a request waits for one before it is refused with 503.
    "DATABASE_POOL_CONNECTIONS": 0,
    "DATABASE_POOL_TIMEOUT": 5.0,
    # How long a write waits for the database's write lock (another process's, a transaction's)
    # before it is refused with 503.
    "DATABASE_BUSY_TIMEOUT": 5.0,
    # SQLite's PRAGMA synchronous. NORMAL in WAL mode keeps every acknowledged append across a
    # crash of the server process; FULL also survives power loss, at some cost in speed.
    "SQLITE_SYNCHRONOUS": "NORMAL",
    # The Redis that carries commits between server processes sharing a database, so that a
    # reader in one process hears of an append in another. Empty: one process, no Redis.
    "REDIS_URL": "",
    # How long a long-poll read waits for new data before answering 204 No Content.
    "LONG_POLL_TIMEOUT": 20.0,
    # SSE responses end after about this long so that clients reconnect (and CDNs can collapse).
    "SSE_MAX_DURATION": 60.0,
    # How often an idle live connection sends something (a comment line on SSE, a ping on a
    # websocket), so that proxies keep it open. Gone clients are noticed at once regardless.
    "KEEPALIVE": 25.0,
    # The most live readers (long-polls waiting, SSE responses, websocket readers) one server
    # process holds at once; past it a new one is refused at once, to be retried.
    "MAX_LIVE_READERS": 10_000,
    # How long a client may take to send a request's line and headers, and then its body.
    "HEADER_TIMEOUT": 5.0,
    "BODY_TIMEOUT": 15.0,
    # The most bytes of stream data one catch-up or long-poll response carries.
    "MAX_READ_BYTES": 1024 * 1024,
    # The largest request body accepted by an append or create.
    "MAX_APPEND_BYTES": 16 * 1024 * 1024,
    # The largest single message (chunk) of any stream, and the most a stream may hold.
    "MAX_CHUNK_BYTES": 1024 * 1024,
    "MAX_STREAM_BYTES": 300 * 1024 * 1024,
    # The secret key; empty means the one in the instance folder, created on first start.
    "SECRET_KEY": "",
    # "disabled" turns authentication off; the server then serves loopback clients only.
    "AUTH": "enabled",
    # How long a public access token returned by trigger stays valid.
    "PUBLIC_TOKEN_TTL": "1h",
    # Run streams are deleted this many days after their last write.
    "RUN_STREAM_RETENTION_DAYS": 28,
    # A websocket writer silent this long no longer holds its stream open at its run's end.
    "WRITER_TIMEOUT": 60.0,
    # A run whose worker sent no heartbeat for this long has failed: its worker is gone.
    "HEARTBEAT_TIMEOUT": 120.0,
    # How often the server purges expired streams and ends abandoned runs and streams.
    "MAINTENANCE_INTERVAL": 60.0,
}


def instance_path_from(config: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The instance folder: ``config["INSTANCE_PATH"]``, ``RUNSTREAM_INSTANCE_PATH``, or
    ``./instance``, as an absolute path."""
    chosen = config.get("INSTANCE_PATH") or environ.get("RUNSTREAM_INSTANCE_PATH") or "instance"
    return os.path.abspath(str(chosen))


@dataclass(frozen=True)
class Settings:
    """The typed view of the Flask config that the rest of Runstream reads."""

    database_url: str
    database_pool_connections: int
    database_pool_timeout: float
    database_busy_timeout: float
    sqlite_synchronous: str
    redis_url: str
    long_poll_timeout: float
    sse_max_duration: float
    keepalive: float
    max_live_readers: int
    header_timeout: float
    body_timeout: float
    max_read_bytes: int
    max_append_bytes: int
    max_chunk_bytes: int
    max_stream_bytes: int
    secret_key: str
    auth_disabled: bool
    public_token_ttl: str
    run_stream_retention_seconds: int
    writer_timeout: float
    heartbeat_timeout: float
    maintenance_interval: float

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], instance_path: str) -> Settings:
        database_url = str(config["DATABASE_URL"]) or default_database_url(instance_path)
        synchronous = str(config["SQLITE_SYNCHRONOUS"]).upper()
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(
                "RUNSTREAM_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA, "
                f"not {synchronous!r}"
            )
        return cls(
            database_url=database_url,
            database_pool_connections=_whole_number(config, "DATABASE_POOL_CONNECTIONS"),
            database_pool_timeout=_positive_number(config, "DATABASE_POOL_TIMEOUT"),
            database_busy_timeout=_positive_number(config, "DATABASE_BUSY_TIMEOUT"),
            sqlite_synchronous=synchronous,
            redis_url=_redis_url(config["REDIS_URL"]),
            long_poll_timeout=_positive_number(config, "LONG_POLL_TIMEOUT"),
            sse_max_duration=_positive_number(config, "SSE_MAX_DURATION"),
            keepalive=_positive_number(config, "KEEPALIVE"),
            max_live_readers=int(_positive_number(config, "MAX_LIVE_READERS")),
            header_timeout=_positive_number(config, "HEADER_TIMEOUT"),
            body_timeout=_positive_number(config, "BODY_TIMEOUT"),
            max_read_bytes=int(_positive_number(config, "MAX_READ_BYTES")),
            max_append_bytes=int(_positive_number(config, "MAX_APPEND_BYTES")),
            max_chunk_bytes=int(_positive_number(config, "MAX_CHUNK_BYTES")),
            max_stream_bytes=int(_positive_number(config, "MAX_STREAM_BYTES")),
            secret_key=_secret_key(config["SECRET_KEY"]),
            auth_disabled=_auth_disabled(config["AUTH"]),
            public_token_ttl=str(config["PUBLIC_TOKEN_TTL"]),
            run_stream_retention_seconds=int(
                _positive_number(config, "RUN_STREAM_RETENTION_DAYS") * 86400
            ),
            writer_timeout=_positive_number(config, "WRITER_TIMEOUT"),
            heartbeat_timeout=_positive_number(config, "HEARTBEAT_TIMEOUT"),
            maintenance_interval=_positive_number(config, "MAINTENANCE_INTERVAL"),
        )


def default_database_url(instance_path: str) -> str:
    return "sqlite:///" + os.path.join(instance_path, "runstream.sqlite3")


def _redis_url(value: Any) -> str:
    """The Redis URL, checked at start so that a typo fails there rather than in every
    reconnection. The message leaves the URL out, as it may hold a password."""
    url = str(value or "")
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("RUNSTREAM_REDIS_URL must start with redis://, rediss:// or unix://")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("RUNSTREAM_REDIS_URL has a port that is no number") from None
    return url


def _secret_key(value: Any) -> str:
    """The secret key setting; empty means the instance folder's. A key short enough to be
    guessed is refused at start, naming the setting, rather than guarding every stream."""
    key = str(value or "")
    if key:
        check_secret_key(
            key,
            "RUNSTREAM_SECRET_KEY",
            "; set a long random one, such as python3 -c 'import secrets; "
            'print("rs_sk_" + secrets.token_urlsafe(32))\', or unset it to use the key '
            "Runstream generates in its instance folder",
        )
    return key


def _auth_disabled(value: Any) -> bool:
    setting = str(value).strip().lower()
    if setting not in {"enabled", "disabled"}:
        raise ValueError(f"RUNSTREAM_AUTH must be enabled or disabled, not {value!r}")
    return setting == "disabled"


def _positive_number(config: Mapping[str, Any], key: str) -> float:
    value = config[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"RUNSTREAM_{key} must be a number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"RUNSTREAM_{key} must be greater than zero, not {value!r}")
    return number


def _whole_number(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"RUNSTREAM_{key} must be a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"RUNSTREAM_{key} must be a whole number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"RUNSTREAM_{key} must be 0 or more, not {value!r}")
    return number
