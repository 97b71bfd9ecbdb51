"""Stream cursors for live reads, which keep CDN caches from replaying one empty response.

A cursor is the number of 20-second intervals since 2024-10-09T00:00:00Z. A client echoes the last
cursor it got; when that is not behind the clock, the server answers a cursor strictly greater, by
a random jump of up to an hour, so that the cache key of the next request is always new.
"""

from __future__ import annotations

import random
import time

from ..core import inputs
from ..core.errors import Invalid

EPOCH = 1728432000  # 2024-10-09T00:00:00Z
# Far past any cursor the clock will reach; a larger echo is not one of ours.
MAX_CURSOR = 10**15
INTERVAL_SECONDS = 20
MAX_JITTER_SECONDS = 3600


def current_interval(now: float | None = None) -> int:
    return int(((time.time() if now is None else now) - EPOCH) // INTERVAL_SECONDS)


def next_cursor(client_cursor: str | None, now: float | None = None) -> str:
    interval = current_interval(now)
    echoed = _echoed(client_cursor)
    if echoed is not None and echoed >= interval:
        jitter = random.randint(1, MAX_JITTER_SECONDS)
        return str(echoed + max(1, jitter // INTERVAL_SECONDS))
    return str(interval)


def _echoed(client_cursor: str | None) -> int | None:
    """The cursor a client echoed, if it is a number this server could have sent; any other
    value is ignored, as a cursor is only ever a hint for caches."""
    if client_cursor is None:
        return None
    try:
        return inputs.whole_number("cursor", client_cursor, maximum=MAX_CURSOR)
    except Invalid:
        return None
