"""The soak, for CI: 50 SDK writers and 200 live readers (websocket and SSE mixed) for 20 s.

The implementation is bench/soak.py (two minutes there); this runs it for 20 seconds and
asserts what must hold: no chunk lost, duplicated or reordered for any reader, and once the
readers have left, the server's worker is back to its baseline memory (within 10% + 20 MB,
after its memory trim) and threads.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"
SECONDS = 20.0


def load_soak() -> ModuleType:
    """bench/soak.py as the module ``soak``: importable by name, as the reader processes
    (multiprocessing spawn) need, since they inherit this process's sys.path."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("soak")


def test_a_20_second_soak_loses_nothing_and_gives_memory_and_threads_back() -> None:
    """50 writers pipe 10 chunks a second each for 20 s (10,000 chunks) while 200 readers, four
    per stream, half over websockets and half over SSE, in two client processes, follow them
    from the first chunk to the end: each reader gets every chunk of its stream exactly once, in
    order (40,000 deliveries); after they leave, the worker's RSS is back within 10% + 20 MB of
    the baseline and its thread count at the baseline."""
    soak = load_soak()
    soak.raise_fd_limit()
    result = soak.soak(seconds=SECONDS, writers=50, readers=200)
    print(f"\n{result.report()}")

    assert result.problems == []
    assert result.written == 50 * int(SECONDS * 10)
    assert result.delivered == result.expected_deliveries == 4 * result.written
    assert result.memory_back, (result.baseline, result.after, result.rss_bound_kib)
    assert result.threads_back, (result.baseline, result.after)
    assert result.log_problems == []
