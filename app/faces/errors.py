"""How every face answers a refusal of the core: one table, one row per kind of error.

The core raises errors by meaning (:mod:`runstream.server.core.errors`). Over HTTP, Durable
Streams answers the row's status with a plain-text message and the protocol's headers, and the
runs API the same status with ``{"error": message}``; a websocket closes with the row's close
code and the message as its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from runstream import wire
from runstream.identifiers import InvalidIdentifier

from ..core import offsets
from ..core.errors import (
    Busy,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    NotPermitted,
    ProducerFenced,
    RunstreamError,
    SequenceGap,
    StreamClosed,
    TimedOut,
    TooLarge,
    Unauthenticated,
)
from .live import RETRY_AFTER_SECONDS

# What the faces catch: the core's refusals, and identifiers the shared checks refused.
REFUSALS = (RunstreamError, InvalidIdentifier)


@dataclass(frozen=True)
class Answer:
    status: int  # the HTTP status
    close_code: int  # the websocket close code


ANSWERS: dict[type[Exception], Answer] = {
    Invalid: Answer(400, wire.CLOSE_INVALID),
    InvalidIdentifier: Answer(400, wire.CLOSE_INVALID),
    Unauthenticated: Answer(401, wire.CLOSE_UNAUTHENTICATED),
    NotPermitted: Answer(403, wire.CLOSE_NOT_PERMITTED),
    ProducerFenced: Answer(403, wire.CLOSE_NOT_PERMITTED),
    NotFound: Answer(404, wire.CLOSE_NOT_FOUND),
    TimedOut: Answer(408, wire.CLOSE_TIMEOUT),
    Conflict: Answer(409, wire.CLOSE_CONFLICT),
    Gone: Answer(410, wire.CLOSE_GONE),
    TooLarge: Answer(413, wire.CLOSE_TOO_LARGE),
    Busy: Answer(503, wire.CLOSE_TRY_AGAIN_LATER),
}


def answer_for(error: Exception) -> Answer:
    """The row of the nearest class of ``error`` (a StreamClosed answers as a Conflict)."""
    for kind in type(error).__mro__:
        answer = ANSWERS.get(kind)
        if answer is not None:
            return answer
    raise TypeError(f"no answer for {type(error).__name__}") from error


def message_of(error: Exception) -> str:
    return error.message if isinstance(error, RunstreamError) else str(error)


def protocol_headers(error: Exception) -> dict[str, str]:
    """The machine-readable part of a refusal, as the Durable Streams protocol sends it."""
    if isinstance(error, StreamClosed):
        return {"Stream-Closed": "true", "Stream-Next-Offset": offsets.encode(error.next_position)}
    if isinstance(error, ProducerFenced):
        return {"Producer-Epoch": str(error.current_epoch)}
    if isinstance(error, SequenceGap):
        return {
            "Producer-Expected-Seq": str(error.expected),
            "Producer-Received-Seq": str(error.received),
        }
    return {}


def http_headers(error: Exception) -> dict[str, str]:
    """What every HTTP face adds to a refusal: when to try again, for a busy server."""
    if isinstance(error, Busy):
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return {}
