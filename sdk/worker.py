"""The worker: claims queued runs of its tasks and executes them.

Each run executes with its run context set, so stream calls inside the task find their run. The
run completes only after every pipe and writer the task started has delivered its chunks; a
task that raises fails the run with the error. A heartbeat tells the server the worker is alive
and tells the worker when a run was canceled. On SIGTERM the worker stops claiming, lets its
running runs finish, and exits. Several workers can run side by side: the server never gives
two of them the same run.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import socket
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from . import _api
from ._context import RunInfo, RunScope, TaskContext, current_scope
from .tasks import Task

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        tasks: Mapping[str, Task[Any]],
        *,
        concurrency: int = 4,
        poll_interval: float = 0.5,
        heartbeat_interval: float = 10.0,
        worker_id: str | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("a worker needs at least one task")
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.tasks = dict(tasks)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: set[asyncio.Task[None]] = set()
        # Runs waiting for a child run do not occupy a slot.
        self._waiting = 0
        self._slot_freed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and execute runs until ``stop`` is set, then wait for the running ones."""
        self._loop = asyncio.get_running_loop()
        log.info("worker %s serving tasks %s", self.worker_id, ", ".join(sorted(self.tasks)))
        while not stop.is_set():
            free = self.concurrency + self._waiting - len(self._running)
            claimed: list[dict[str, Any]] = []
            if free > 0:
                try:
                    answer = await _api.call(
                        "POST",
                        "/api/v1/runs/claim",
                        {
                            "worker_id": self.worker_id,
                            "task_ids": sorted(self.tasks),
                            "limit": free,
                        },
                    )
                    claimed = answer["runs"]
                except Exception as error:
                    log.warning("could not claim runs, retrying: %s", error)
            for record in claimed:
                self._start(record)
            if not claimed:
                self._slot_freed.clear()
                await _first_of(stop.wait(), self._slot_freed.wait(), timeout=self.poll_interval)
        if self._running:
            log.info("stopping: waiting for %d running runs", len(self._running))
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start(self, record: dict[str, Any]) -> None:
        context = contextvars.copy_context()
        scope = RunScope(
            TaskContext(
                RunInfo(
                    id=record["id"],
                    task_id=record["task_id"],
                    parent_task_run_id=record.get("parent_run_id"),
                    root_task_run_id=record["root_run_id"],
                )
            ),
            waiting=self._adjust_waiting,
        )
        context.run(current_scope.set, scope)
        execution = asyncio.get_running_loop().create_task(
            self._execute(record, scope), context=context
        )
        self._running.add(execution)
        execution.add_done_callback(self._finished)

    def _finished(self, execution: asyncio.Task[None]) -> None:
        self._running.discard(execution)
        self._slot_freed.set()

    def _adjust_waiting(self, change: int) -> None:
        # A blocking task calls this from another thread: apply it in the worker's own loop.
        self._loop.call_soon_threadsafe(self._apply_waiting, change)

    def _apply_waiting(self, change: int) -> None:
        self._waiting += change
        self._slot_freed.set()

    async def _execute(self, record: dict[str, Any], scope: RunScope) -> None:
        run_id = record["id"]
        task = self.tasks[record["task_id"]]
        work = asyncio.create_task(task.run(record.get("payload"), scope.ctx))
        heartbeat = asyncio.create_task(self._heartbeat(run_id, work))
        try:
            output = await work
            await scope.wait_for_streams()
            try:
                json.dumps(output)
            except (TypeError, ValueError) as error:
                raise TypeError(f"the task's output is not JSON: {error}") from error
            await self._report(run_id, "complete", {"output": output})
        except asyncio.CancelledError:
            log.info("run %s was canceled", run_id)
            await asyncio.gather(scope.wait_for_streams(), return_exceptions=True)
        except Exception as error:
            log.info("run %s failed: %r", run_id, error)
            await asyncio.gather(scope.wait_for_streams(), return_exceptions=True)
            await self._report(
                run_id,
                "fail",
                {
                    "error": {
                        "name": type(error).__name__,
                        "message": str(error),
                        "stack": "".join(traceback.format_exception(error)),
                    }
                },
            )
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, run_id: str, work: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                answer = await _api.call(
                    "POST", f"/api/v1/runs/{run_id}/heartbeat", {"worker_id": self.worker_id}
                )
            except Exception as error:
                log.warning("heartbeat of run %s failed: %s", run_id, error)
                continue
            if answer["status"] == "CANCELED":
                work.cancel()
                return

    async def _report(self, run_id: str, outcome: str, body: dict[str, Any]) -> None:
        """Tell the server how the run ended, retrying while the server is unreachable."""
        delay = 0.1
        while True:
            try:
                await _api.call(
                    "POST",
                    f"/api/v1/runs/{run_id}/{outcome}",
                    {"worker_id": self.worker_id, **body},
                )
                return
            except _api.ApiError as error:
                # The server refused: the run was canceled or failed meanwhile. Nothing to retry.
                log.warning("run %s could not be reported as %s: %s", run_id, outcome, error)
                return
            except Exception as error:
                log.warning("could not report run %s, retrying: %s", run_id, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def _first_of(*waits: Any, timeout: float) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in tasks:
            pending.cancel()
