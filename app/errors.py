"""Errors the store raises, each carrying the HTTP status the protocol answers with.

Every error says what was wrong in words a client developer can act on; ``headers`` carries the
machine-readable part the Durable Streams protocol asks for (for example ``Stream-Closed``).
"""

from __future__ import annotations


class StreamError(Exception):
    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(StreamError):
    status = 400


class Unauthorized(StreamError):
    status = 401


class Forbidden(StreamError):
    status = 403


class NotFound(StreamError):
    status = 404


class Conflict(StreamError):
    status = 409


class Gone(StreamError):
    status = 410


class PayloadTooLarge(StreamError):
    status = 413
