"""Time as the store keeps it and as every face writes it: aware UTC, RFC 3339 with ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(value: datetime) -> str:
    """``2030-01-01T00:00:00.123456Z``: RFC 3339 in UTC, as JSON bodies and headers carry it."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
