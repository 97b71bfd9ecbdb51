"""The facts of the websocket frame format (docs/websocket-protocol.md) that both ends share:
how a chunk is encoded, and the close codes that end a connection.

A chunk is one JSON value, sent and stored as compact UTF-8 JSON text, so that its size is what
the limits count. What JSON cannot carry is refused where it is written, never altered: objects
without a JSON encoding, NaN and the infinities, and strings that are not valid Unicode (lone
surrogates, which no UTF-8 reader could decode).
"""

from __future__ import annotations

import json
from typing import Any

# A normal end: the stream ended (reader) or the writer said it was done.
CLOSE_NORMAL = 1000
# The reader's timeout passed without a chunk.
CLOSE_TIMEOUT = 4408
# Refusals: 4000 plus the HTTP status of the same refusal over HTTP, so that one number means
# one thing on every face (4400 bad request, 4401, 4403, 4404, 4409, 4410, 4413).
CLOSE_INVALID = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_PERMITTED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_CONFLICT = 4409
CLOSE_GONE = 4410
CLOSE_TOO_LARGE = 4413
# Never sent on purpose: something failed inside the server.
CLOSE_INTERNAL_ERROR = 1011
# The server holds as many live readers as it may (RFC 6455's "try again later"): reconnect
# after a short wait.
CLOSE_TRY_AGAIN_LATER = 1013

# The largest frame a reader is sent: what a websocket client accepts by default (the
# ``websockets`` package's ``max_size``). A run stream's chunk is at most this less the frame's
# own overhead, so that every chunk fits a frame of its own.
MAX_READER_FRAME_BYTES = 2**20
# A reader frame's own bytes around its chunks: the type, the index and the brackets.
READER_FRAME_OVERHEAD = 64
MAX_RUN_CHUNK_BYTES = MAX_READER_FRAME_BYTES - READER_FRAME_OVERHEAD
# The most chunks one writer's "chunks" frame may carry (the server closes with 4413 past it).
MAX_CHUNKS_PER_FRAME = 10_000


def is_refusal(code: int) -> bool:
    """True for the close codes by which the server refuses a request (retrying cannot help)."""
    return 4000 <= code < 5000 and code != CLOSE_TIMEOUT


# One encoder for every chunk: json.dumps with options builds a new one on each call, which for
# small chunks cost more than the encoding.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_chunk(chunk: Any) -> str:
    """A chunk's JSON text; TypeError or ValueError for what is not a JSON value."""
    text = _encoder.encode(chunk)
    if not text.isascii():  # ASCII text holds no lone surrogate (and the test costs nothing)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"the chunk holds a string that is not valid Unicode: {error}"
            ) from None
    return text
