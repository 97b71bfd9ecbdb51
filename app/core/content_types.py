"""Content types as the Durable Streams protocol compares them.

Media types are case-insensitive and their parameters (``charset=utf-8``) do not make a stream a
different kind of stream, so two content types match when their media types do.
"""

from __future__ import annotations

DEFAULT = "application/octet-stream"
JSON = "application/json"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def same_content_type(a: str, b: str) -> bool:
    return media_type(a) == media_type(b)


def is_json(content_type: str) -> bool:
    return media_type(content_type) == JSON


def is_text(content_type: str) -> bool:
    """Text streams are sent over SSE as they are; any other binary stream is base64-encoded."""
    kind = media_type(content_type)
    return kind.startswith("text/") or kind == JSON
