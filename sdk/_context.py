"""The run a task is executing, carried in a context variable.

The worker sets it before calling a task function. Context variables flow into asyncio tasks
and, through ``asyncio.to_thread`` or a copied context, into threads, so stream calls made
anywhere inside a task find their run. The scope also keeps the pipes and writers the task
started, because a run does not finish while they are still sending.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RunstreamError
from .identifiers import is_run_id


@dataclass(frozen=True)
class RunInfo:
    id: str
    task_id: str
    parent_task_run_id: str | None
    root_task_run_id: str


@dataclass(frozen=True)
class TaskContext:
    """The second argument of a task function: ``ctx.run.id`` and friends."""

    run: RunInfo


@dataclass
class RunScope:
    ctx: TaskContext
    # The deliveries of the pipes and writers started in this run. A blocking task function's
    # run on the SDK's own event loop, so they may belong to another loop than the worker's.
    pending: list[asyncio.Task[None]] = field(default_factory=list)
    # Told +1 / -1 when the task starts / stops waiting for a child run, so that the worker can
    # run other work meanwhile.
    waiting: Callable[[int], None] | None = None

    async def wait_for_streams(self) -> None:
        """Wait until every pipe and writer of the run has delivered; raise the first failure."""
        while self.pending:
            batch, self.pending = self.pending, []
            results = await asyncio.gather(
                *(_wait_anywhere(delivery) for delivery in batch), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result


async def _wait_anywhere(task: asyncio.Task[None]) -> None:
    """Await a task of any event loop."""
    if task.get_loop() is asyncio.get_running_loop():
        await task
    else:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_await(task), task.get_loop()))


async def _await(task: asyncio.Task[None]) -> None:
    await task


current_scope: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "runstream_run_scope", default=None
)


def current_run() -> RunInfo | None:
    scope = current_scope.get()
    return scope.ctx.run if scope is not None else None


def resolve_target(target: str | None) -> str:
    """The run id a stream call means: ``self`` (the default), ``parent``, ``root``, or an id.

    In a root run, ``parent`` and ``root`` are the run itself.
    """
    run = current_run()
    if target is None or target in ("self", "parent", "root"):
        if run is None:
            raise RunstreamError(
                "outside a task there is no current run: pass target=<run id> "
                '(or call this from inside a task, where target defaults to "self")'
            )
        if target == "parent":
            return run.parent_task_run_id or run.id
        if target == "root":
            return run.root_task_run_id or run.id
        return run.id
    if not is_run_id(target):
        raise RunstreamError(
            f'target must be "self", "parent", "root" or a run id such as run_..., not {target!r}'
        )
    return target
