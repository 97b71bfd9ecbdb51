"""Runstream settings.

Settings are read from ``RUNSTREAM_*`` environment variables (values that parse as JSON are
converted, so ``RUNSTREAM_LONG_POLL_TIMEOUT=5`` is the number 5) and may be overridden by the
mapping given to :func:`app.create_app`. Every setting has a default that works on a fresh machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {
    # Where streams are stored. Empty means an SQLite file in the Flask instance folder.
    "DATABASE_URL": "",
    # SQLite's PRAGMA synchronous. NORMAL in WAL mode keeps every acknowledged append across a
    # crash of the server process; FULL also survives power loss, at some cost in speed.
    "SQLITE_SYNCHRONOUS": "NORMAL",
    # How long a long-poll read waits for new data before answering 204 No Content.
    "LONG_POLL_TIMEOUT": 20.0,
    # SSE responses end after about this long so that clients reconnect (and CDNs can collapse).
    "SSE_MAX_DURATION": 60.0,
    # How often an idle SSE response sends a comment line, which also notices gone clients.
    "SSE_KEEPALIVE": 5.0,
    # The most bytes of stream data one catch-up or long-poll response carries.
    "MAX_READ_BYTES": 1024 * 1024,
    # The largest request body accepted by an append or create.
    "MAX_APPEND_BYTES": 16 * 1024 * 1024,
}


@dataclass(frozen=True)
class Settings:
    """The typed view of the Flask config that the rest of Runstream reads."""

    database_url: str
    sqlite_synchronous: str
    long_poll_timeout: float
    sse_max_duration: float
    sse_keepalive: float
    max_read_bytes: int
    max_append_bytes: int

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
            sqlite_synchronous=synchronous,
            long_poll_timeout=_positive_number(config, "LONG_POLL_TIMEOUT"),
            sse_max_duration=_positive_number(config, "SSE_MAX_DURATION"),
            sse_keepalive=_positive_number(config, "SSE_KEEPALIVE"),
            max_read_bytes=int(_positive_number(config, "MAX_READ_BYTES")),
            max_append_bytes=int(_positive_number(config, "MAX_APPEND_BYTES")),
        )


def default_database_url(instance_path: str) -> str:
    return "sqlite:///" + os.path.join(instance_path, "runstream.sqlite3")


def _positive_number(config: Mapping[str, Any], key: str) -> float:
    value = config[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"RUNSTREAM_{key} must be a number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"RUNSTREAM_{key} must be greater than zero, not {value!r}")
    return number
