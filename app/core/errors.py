"""The errors of Runstream's core, by what went wrong rather than by how a face reports it.

The core (store, hub, runs) raises these; it knows nothing of HTTP statuses, protocol headers
or websocket close codes. Each face turns them into its own answer through the one table in
:mod:`runstream.server.faces.errors`. Every error says what was wrong in words a client
developer can act on, and carries as attributes the details a face may need to send back
(the producer's expected sequence number, the stream's tail, ...).
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Something a request asked for that Runstream refuses; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(RunstreamError):
    """The request itself is malformed: a bad offset, header value, identifier or body."""


class Unauthenticated(RunstreamError):
    """No credential, or one that is neither the secret key nor a valid token."""


class NotPermitted(RunstreamError):
    """The credential is valid but may not do this."""


class NotFound(RunstreamError):
    """The stream or run does not exist (or has expired)."""


class Gone(RunstreamError):
    """The stream existed and was deleted."""


class Conflict(RunstreamError):
    """The request contradicts what is stored: another configuration, an ended run, ..."""


class StreamClosed(Conflict):
    """The stream is closed and accepts no more appends; ``next_position`` is its tail."""

    def __init__(self, message: str, *, next_position: int) -> None:
        super().__init__(message)
        self.next_position = next_position


class ProducerFenced(RunstreamError):
    """A producer wrote with an older epoch than its latest: it is a zombie, fenced off."""

    def __init__(self, message: str, *, current_epoch: int) -> None:
        super().__init__(message)
        self.current_epoch = current_epoch


class SequenceGap(Conflict):
    """A producer skipped sequence numbers: ``expected`` is the next the stream accepts."""

    def __init__(self, message: str, *, expected: int, received: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.received = received


class TooLarge(RunstreamError):
    """A body, chunk or stream over its limit."""


class Busy(RunstreamError):
    """The server cannot take the request now (its live readers or its database connections
    are all in use); the same request a moment later can succeed."""


class TimedOut(RunstreamError):
    """The client took too long to send its request."""
