"""Tasks: functions a worker runs, triggered from anywhere.

    @task(id="summarize")
    async def summarize(payload: dict, ctx: TaskContext) -> dict: ...

A task function takes the run's payload and a context (``ctx.run.id``,
``ctx.run.parent_task_run_id``, ``ctx.run.root_task_run_id``), may be ``async def`` or a plain
``def`` (run in a thread), and returns the run's output (any JSON value).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, overload

from . import _api, _portal, runs
from ._context import TaskContext, current_run, current_scope
from .runs import settings_for

R = TypeVar("R")
TaskFunction = Callable[[Any, TaskContext], Awaitable[R] | R]

_registry: dict[str, Task[Any]] = {}


@dataclass(frozen=True)
class TriggeredRun:
    """A run just triggered: its id, and a token that may read it (hand that to a browser)."""

    id: str
    public_access_token: str


@dataclass(frozen=True)
class TaskRunResult(Generic[R]):
    """How a run that was waited for ended: ``ok`` with its ``output``, or its ``error``."""

    id: str
    ok: bool
    output: R | None
    error: Any

    def unwrap(self) -> R:
        if not self.ok:
            raise RuntimeError(f"run {self.id} did not complete: {self.error}")
        return cast(R, self.output)


class Task(Generic[R]):
    def __init__(self, id: str, function: TaskFunction[R]) -> None:
        self.id = id
        self.function = function

    async def run(self, payload: Any, ctx: TaskContext) -> R:
        """Call the task function; a plain function runs in a thread, with the run's context."""
        if inspect.iscoroutinefunction(self.function):
            return cast(R, await self.function(payload, ctx))
        result = await asyncio.to_thread(self.function, payload, ctx)
        if inspect.isawaitable(result):
            return cast(R, await result)
        return result

    async def trigger(self, payload: Any = None) -> TriggeredRun:
        """Queue a run. Inside a task, the new run is a child of the current run."""
        parent = current_run()
        return await _trigger(self.id, payload, parent.id if parent else None)

    async def trigger_and_wait(self, payload: Any = None) -> TaskRunResult[R]:
        """Queue a run and wait until it ends.

        Inside a task, the worker running this task takes on other work while it waits, so a
        child can run even on a worker with one slot.
        """
        triggered = await self.trigger(payload)
        scope = current_scope.get()
        if scope is not None and scope.waiting is not None:
            scope.waiting(+1)
        try:
            run = await runs.wait_until_finished(triggered.id)
        finally:
            if scope is not None and scope.waiting is not None:
                scope.waiting(-1)
        return TaskRunResult(run.id, run.status == "COMPLETED", run.output, run.error)

    def trigger_sync(self, payload: Any = None) -> TriggeredRun:
        """:meth:`trigger`, blocking: for code that is not async."""
        return _portal.run(self.trigger(payload))

    def trigger_and_wait_sync(self, payload: Any = None) -> TaskRunResult[R]:
        """:meth:`trigger_and_wait`, blocking: for code that is not async."""
        return _portal.run(self.trigger_and_wait(payload))


class _Declaration:
    """What ``task(id=...)`` returns: the decorator that turns a function into a Task."""

    def __init__(self, id: str) -> None:
        self.id = id

    @overload
    def __call__(self, function: Callable[[Any, TaskContext], Awaitable[R]]) -> Task[R]: ...
    @overload
    def __call__(self, function: Callable[[Any, TaskContext], R]) -> Task[R]: ...
    def __call__(self, function: Callable[[Any, TaskContext], Any]) -> Task[Any]:
        declared: Task[Any] = Task(self.id, function)
        _registry[self.id] = declared
        return declared


async def trigger(
    task_id: str,
    payload: Any = None,
    *,
    access_token: str | None = None,
    base_url: str | None = None,
) -> TriggeredRun:
    """Queue a run of the task ``task_id``, by its id: for code that does not import the task.

    ``access_token`` triggers with a public access token (one with ``trigger:tasks:<task_id>``)
    instead of the secret key; ``base_url`` triggers on that server instead of the configured
    one. The run is a root run, even inside a task.
    """
    return await _trigger(task_id, payload, None, access_token=access_token, base_url=base_url)


async def _trigger(
    task_id: str,
    payload: Any,
    parent_run_id: str | None,
    *,
    access_token: str | None = None,
    base_url: str | None = None,
) -> TriggeredRun:
    answer = await _api.call(
        "POST",
        f"/api/v1/tasks/{task_id}/trigger",
        {"payload": payload, "parent_run_id": parent_run_id},
        access_token=access_token,
        config=settings_for(base_url),
    )
    return TriggeredRun(answer["id"], answer["public_access_token"])


def task(*, id: str) -> _Declaration:
    """Declare a task; a worker started with this module runs its runs."""
    return _Declaration(id)


def registered() -> dict[str, Task[Any]]:
    """Every task declared so far, by id."""
    return dict(_registry)
