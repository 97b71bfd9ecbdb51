"""Stream offsets: opaque to clients, but they encode a message position.

An offset is two zero-padded 16-digit decimal fields joined by ``_``: the position of a message in
its stream, then a field reserved for positions inside a message (always zero in offsets this
server hands out). Fixed width makes offsets sort lexicographically in stream order, and a chunk
index maps to its offset without a lookup: chunk 5 starts at ``0000000000000005_0000000000000000``.
The sentinels ``-1`` (the start) and ``now`` (the tail) can never be produced.
"""

from __future__ import annotations

import re

from .errors import Invalid

START = "-1"
NOW = "now"
WIDTH = 16
_OFFSET = re.compile(rf"([0-9]{{{WIDTH}}})_([0-9]{{{WIDTH}}})")


def encode(position: int) -> str:
    return f"{position:0{WIDTH}d}_{0:0{WIDTH}d}"


def decode(offset: str) -> int:
    """The position an offset names; a malformed offset is a 400 that quotes it."""
    match = _OFFSET.fullmatch(offset)
    if match is None or int(match.group(2)) != 0:
        raise Invalid(
            f"invalid offset {offset[:80]!r}: use -1, now, or a Stream-Next-Offset value "
            "returned by this server"
        )
    return int(match.group(1))
