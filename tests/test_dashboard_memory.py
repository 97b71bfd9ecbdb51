"""What the runs list costs the server in memory when the runs carry large payloads: a real
`runstream serve` (gunicorn, one gevent worker, SQLite), three runs-list views open as raw
websocket clients of the page's ReactPy view route (read continuously, as a browser reads), and
50 runs triggered with 2 MiB payloads while they watch.

The list shows summaries of runs, never their payloads (``Runs.summaries``): so however large
the payloads, the worker's memory must stay within 100 MiB of what it held idle.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, start_server
from dashboard_support import gunicorn_worker_pid, trigger
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

HANG_GUARD = 60.0
MIB = 1024 * 1024
VIEWS = 3
RUNS = 50
PAYLOAD_CHARACTERS = 2 * MIB
# The requirement: the worker stays within this much of its idle resident memory.
ALLOWED_GROWTH_KIB = 100 * 1024
# How long the views must all stay silent for their updates to count as all received.
QUIET = 2.0
# The idle worker is settled once its RSS moves less than this between two reads SETTLE apart.
SETTLED_KIB = 512
SETTLE = 0.5
# No worker serves this task: its runs stay queued, so each trigger is one change of the list.
TASK = "e2e.manual"


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own (a fresh SQLite file), authentication off (loopback only) so that
    the raw view clients need no session. A trigger's body is read whole up to
    RUNSTREAM_MAX_APPEND_BYTES; it is set here, above a 2 MiB payload and its JSON framing,
    so that the test does not rest on the default (16 MiB) staying above it."""
    server = start_server(
        tmp_path_factory.mktemp("dashboard-memory"),
        env={"RUNSTREAM_AUTH": "disabled", "RUNSTREAM_MAX_APPEND_BYTES": str(4 * MIB)},
    )
    yield server
    server.stop()


def memory_kib(pid: int) -> dict[str, int]:
    """The process's VmRSS (resident now) and VmHWM (the most resident since the last reset),
    in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def settled_rss_kib(pid: int) -> int:
    """The worker's RSS once it stopped moving: what an idle worker holds."""
    deadline = time.monotonic() + HANG_GUARD
    previous = memory_kib(pid)["VmRSS"]
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        current = memory_kib(pid)["VmRSS"]
        if abs(current - previous) < SETTLED_KIB:
            return current
        previous = current
    raise AssertionError(f"the idle worker's RSS did not settle within {HANG_GUARD} s")


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux's clear_refs "5"), so that the peak
    read later is the scenario's, not one from the server's start-up."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class RunsView:
    """A runs-list view of the dashboard, read in a thread of its own as fast as the server
    sends (a browser never leaves its updates unread); what it was sent, in bytes, and its
    latest update (each update of the list carries its whole table)."""

    connection: ClientConnection
    received: int = 0
    messages: int = 0
    latest: str = ""
    last_at: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in self.connection:
                text = message if isinstance(message, str) else message.decode()
                with self.lock:
                    self.received += len(message)
                    self.messages += 1
                    self.latest = text
                    self.last_at = time.monotonic()

    def shows(self, text: str) -> bool:
        with self.lock:
            return text in self.latest

    def silent_for(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_at


@contextlib.contextmanager
def runs_views(server: ServerProcess, count: int) -> Iterator[list[RunsView]]:
    """``count`` views of /runs, each read continuously by a daemon thread until it closes."""
    url = server.url.replace("http://", "ws://") + "/_reactpy/stream/runs"
    with contextlib.ExitStack() as stack:
        views = [
            RunsView(
                stack.enter_context(
                    connect(url, open_timeout=HANG_GUARD, max_queue=None, max_size=None)
                )
            )
            for _ in range(count)
        ]
        for view in views:
            threading.Thread(target=view.read, daemon=True).start()
        yield views


def wait_until_shown(views: list[RunsView], text: str) -> None:
    """Until every view's latest update carries ``text``, and then none was sent anything for
    QUIET seconds: all the updates the changes caused are received."""
    deadline = time.monotonic() + HANG_GUARD
    while not all(view.shows(text) for view in views):
        assert time.monotonic() < deadline, f"not every view came to show {text!r}"
        time.sleep(0.05)
    while min(view.silent_for() for view in views) < QUIET:
        assert time.monotonic() < deadline, "the views kept being sent updates"
        time.sleep(0.1)


def test_the_runs_list_keeps_memory_flat_with_3_pages_and_50_runs_of_2_mib_payloads(
    memory_server: ServerProcess, record_property: Callable[[str, object], None]
) -> None:
    server = memory_server
    pid = gunicorn_worker_pid(server)

    # Warm-up, so that what the server does once and keeps is in the baseline: the dashboard's
    # page and ReactPy's modules (GET /runs), one view rendered over its websocket (the view
    # route, the hub's topic, SQLite's first connection), and the trigger route (a run with a
    # tiny payload: the JSON parser, the store's write path). Not in the baseline: what large
    # payloads, several open views and their updates cost, which is what is measured.
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD) as client:
        for _ in range(2):
            assert client.get("/runs").status_code == 200
    warm_up_run = trigger(server, TASK, "warm-up")
    with runs_views(server, 1) as views:
        wait_until_shown(views, warm_up_run)

    idle_kib = settled_rss_kib(pid)
    reset_peak(pid)

    payloads = [f"{index:04d}" + "x" * (PAYLOAD_CHARACTERS - 4) for index in range(RUNS)]
    with runs_views(server, VIEWS) as views:
        wait_until_shown(views, warm_up_run)
        # Each trigger is news of a run: every open list loads again and sends its new table.
        run_ids = [trigger(server, TASK, payload) for payload in payloads]
        wait_until_shown(views, run_ids[-1])
        # Read while the views are still open: what they hold is part of the cost.
        after = memory_kib(pid)
        sent = [view.received for view in views]
        updates = [view.messages for view in views]

    # The peak (VmHWM since the reset) rather than the RSS at the end: a list that loaded the
    # payloads, even only for as long as a render takes, would show in the peak and could be
    # gone from the RSS by the time it is read. The peak is never below the RSS.
    peak_kib = after["VmHWM"]
    growth_kib = peak_kib - idle_kib
    figures = {
        "idle RSS MiB": round(idle_kib / 1024, 1),
        "after RSS MiB": round(after["VmRSS"] / 1024, 1),
        "peak (HWM) MiB": round(peak_kib / 1024, 1),
        "peak - idle MiB": round(growth_kib / 1024, 1),
        "bytes per view": sent,
        "updates per view": updates,
    }
    record_property("worker memory", figures)
    print(f"gunicorn worker, {VIEWS} runs lists and {RUNS} runs of 2 MiB payloads: {figures}")
    assert growth_kib <= ALLOWED_GROWTH_KIB, (
        f"the worker peaked at {peak_kib / 1024:.1f} MiB, {growth_kib / 1024:.1f} MiB above its "
        f"idle {idle_kib / 1024:.1f} MiB (allowed: {ALLOWED_GROWTH_KIB / 1024:.0f} MiB): {figures}"
    )
