"""Housekeeping the server does on its own, every ``RUNSTREAM_MAINTENANCE_INTERVAL`` seconds
and on ``runstream purge``: delete expired streams, fail runs whose worker vanished, and close
the streams of ended runs whose writers are gone."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from .core.errors import Busy
from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    expired_streams: int
    lost_runs: int
    closed_streams: int


def run_once(runtime: Runtime) -> Report:
    lost = runtime.runs.fail_lost_runs(runtime.settings.heartbeat_timeout)
    return Report(
        expired_streams=runtime.store.purge_expired(),
        lost_runs=len(lost),
        closed_streams=runtime.run_streams.close_abandoned(),
    )


def start(runtime: Runtime) -> threading.Event:
    """Run :func:`run_once` in a daemon thread every maintenance interval, until the returned
    event is set."""

    def loop() -> None:
        while not stop.is_set():
            try:
                run_once(runtime)
            except Busy as busy:  # the database is busy or read-only: no fault of the code
                log.warning("maintenance skipped (%s); trying again in the next interval", busy)
            except Exception:  # keep the housekeeping alive through a passing database error
                log.exception("maintenance failed; trying again in the next interval")
            stop.wait(runtime.settings.maintenance_interval)

    stop = threading.Event()
    thread = threading.Thread(target=loop, name="runstream-maintenance", daemon=True)
    thread.start()
    return stop
