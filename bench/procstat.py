"""What the benchmarks read of the server's processes from /proc, the figures they print, and
how they stop a server.

Shared by the benchmarks under bench/: a gunicorn server is an arbiter and its worker, so every
measure is summed over a process and its descendants.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def raise_fd_limit() -> None:
    """Let this process (and what it starts) open as many sockets as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from its third field (state) on: the name may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the gunicorn arbiter and its worker)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(stat_fields(int(entry.name))[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """User and kernel CPU seconds of these processes (all their threads) so far."""
    user = kernel = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = stat_fields(pid)
            user, kernel = user + int(fields[11]), kernel + int(fields[12])  # utime, stime
    return user / CLOCK_TICKS, kernel / CLOCK_TICKS


def status_sum(pids: Sequence[int], name: str) -> int:
    """A number field of /proc/<pid>/status (``VmRSS`` in KiB, ``Threads``), summed."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{name}:"):
                    total += int(line.split()[1])
    return total


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` of samples already sorted."""
    return float(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))])


def die_with_parent() -> None:
    """Run in a server's process before it starts (``preexec_fn``): it gets SIGTERM when the
    benchmark's process dies, however it dies, and never outlives it. The setting lasts through
    the ``exec`` (``runstream serve`` re-executes itself); a gunicorn arbiter stops its workers
    on that SIGTERM, and they stop if it is gone. ``preexec_fn`` is safe only in a process that
    runs no other thread when it starts the server, as the benchmarks' main threads do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server started in a session of its own, SIGKILL it if it is still there after
    15 s, and then any worker its arbiter left behind."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
