"""The errors the SDK raises."""

from __future__ import annotations


class RunstreamError(Exception):
    """Something the server refused, or that could not be done."""


class ApiError(RunstreamError):
    """The server answered with an error status; ``status`` is the HTTP status (or the
    websocket close code), and the message is the server's explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} ({status})")
        self.status = status
        self.message = message


class StreamWriteError(RunstreamError):
    """A pipe or writer could not deliver all its chunks: the server stayed unreachable, or
    refused them."""


class TaskError(RunstreamError):
    """A run this code waited for ended without completing; ``run`` holds what it ended with."""

    def __init__(self, message: str, run: object) -> None:
        super().__init__(message)
        self.run = run
