"""Numbers and durations from requests, parsed one way for every face: the one place where text a
client sent becomes an ``int``.

Python's ``int()`` takes more than a client should send: Unicode digits (``int("١٢٣")`` is 123,
so ``١٢٣`` and ``123`` would be two spellings of one offset or sequence number), a sign, spaces
and underscores; and it raises ``ValueError`` past 4300 digits, which a face that trusted it
answered with a 500. A number also has to fit what it is used for afterwards: a database's
64-bit column, a JavaScript number, ``datetime`` arithmetic. Every number a request carries (in
a header, a query parameter or a JSON body) goes through here and is either a bounded ``int`` or
a refusal (:class:`~runstream.server.core.errors.Invalid`) that quotes what was sent.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from .errors import Invalid

# The largest integer a JavaScript client holds exactly; Durable Streams' counters are this.
MAX_SAFE_INTEGER = 2**53 - 1
# No duration a request asks for may be longer: a longer one is surely a mistake, and datetime
# arithmetic overflows somewhere past 2.7 million years (datetime.max is the year 9999).
MAX_DURATION_SECONDS = 100 * 365 * 24 * 3600

# ``[0-9]`` and not ``\d``: a ``str`` pattern's ``\d`` matches every Unicode digit.
_DIGITS = re.compile(r"[0-9]+")
_CANONICAL_DIGITS = re.compile(r"0|[1-9][0-9]*")
_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def shown(value: object, limit: int = 40) -> str:
    """A client's value quoted in a message, cut short: a refusal must not echo megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def whole_number(
    name: str,
    text: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_SAFE_INTEGER,
    canonical: bool = False,
) -> int:
    """The integer ``text`` spells in ASCII digits, from ``minimum`` to ``maximum``.

    ``canonical`` refuses leading zeros, for values that must have one spelling (Durable
    Streams' headers). The length is checked before ``int()`` sees the digits, so no length of
    input reaches Python's own limit.
    """
    pattern = _CANONICAL_DIGITS if canonical else _DIGITS
    if (
        pattern.fullmatch(text) is None
        or len(text.lstrip("0")) > len(str(maximum))
        or not minimum <= int(text) <= maximum
    ):
        raise Invalid(f"{name} must be an integer from {minimum} to {maximum}, not {shown(text)}")
    return int(text)


def json_whole_number(
    name: str, value: Any, *, minimum: int = 0, maximum: int = MAX_SAFE_INTEGER
) -> int:
    """An integer taken from a decoded JSON body (``true`` is not 1, ``2.0`` is not 2)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise Invalid(f"{name} must be an integer from {minimum} to {maximum}, not {shown(value)}")
    return value


def duration(name: str, value: Any) -> timedelta:
    """A duration a request asks for: a number of seconds, or ``"30s"``, ``"15m"``, ``"1h"``,
    ``"7d"``; at most :data:`MAX_DURATION_SECONDS`, so that adding it to a time cannot
    overflow."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise Invalid(
                f"invalid {name} {shown(value)}: use a number of seconds or a duration such as "
                "15m, 1h or 7d"
            )
        digits, unit = match.groups()
        count = whole_number(name, digits, maximum=MAX_DURATION_SECONDS)
        seconds = count * _UNIT_SECONDS[unit]
    else:
        seconds = json_whole_number(name, value, maximum=MAX_DURATION_SECONDS)
    if seconds > MAX_DURATION_SECONDS:
        raise Invalid(f"{name} must be at most {MAX_DURATION_SECONDS} seconds (100 years)")
    return timedelta(seconds=seconds)
