"""The tasks a real worker runs for tests/test_sdk.py: ``runstream worker --tasks sdk_tasks``.

Every seed example (Trigger.dev's Realtime Streams v2 PR, in snake_case) comes twice: as an
``async def`` task using ``runstream.streams`` (ids ending ``.async``) and as a plain ``def`` task
using ``runstream.sync`` (ids ending ``.sync``). Both flavours write exactly the same chunks, so
the tests expect the same results of either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from runstream import StreamWriter, Task, TaskContext, streams, task
from runstream.sync import streams as sync_streams

FLAVOURS = ("async", "sync")

# streams.define: one declaration of a stream, used to pipe, append, write and read.
answer = streams.define(id="answer", type=str)
sync_answer = sync_streams.define(id="answer", type=str)

SLOW_CHUNKS = [f"slow-{i}" for i in range(8)]
SLOW_DELAY = 0.15
TWO_PIPES = 60
FAILING_PIPE = ["partial-0", "partial-1", "partial-2"]
WRITER_CHUNKS = [
    "Hello, world!",
    "Hello, world 2!",
    "Hello, world 3!",
    "Hello, world 4!",
    "Hello, world 5!",
    "Hello, world 6!",
]


def flavour_task(name: str, flavour: str) -> Task[Any]:
    """The task ``<name>.<flavour>`` declared in this module."""
    found = globals()[f"{name.replace('-', '_')}_{flavour}"]
    assert isinstance(found, Task) and found.id == f"{name}.{flavour}"
    return found


async def tokens(chunks: list[Any], delay: float = 0.0) -> AsyncIterator[Any]:
    """An async source, like an LLM's token stream."""
    for chunk in chunks:
        await asyncio.sleep(delay)
        yield chunk


def blocking_tokens(chunks: list[Any], delay: float = 0.0) -> Iterator[Any]:
    """A blocking source: a plain generator that sleeps."""
    for chunk in chunks:
        time.sleep(delay)
        yield chunk


def run_ids(ctx: TaskContext) -> dict[str, str | None]:
    return {
        "id": ctx.run.id,
        "parent": ctx.run.parent_task_run_id,
        "root": ctx.run.root_task_run_id,
    }


# -- pipe with a key: iterate the tee, then wait until complete --------------------------------


@task(id="pipe-key.async")
async def pipe_key_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    piped = streams.pipe("ai-stream", tokens(payload["chunks"]))
    seen = [chunk async for chunk in piped.stream]
    await piped.wait_until_complete()
    return {"message": "Stream completed successfully", "seen": seen}


@task(id="pipe-key.sync")
def pipe_key_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    piped = sync_streams.pipe("ai-stream", blocking_tokens(payload["chunks"]))
    seen = list(piped.stream)
    piped.wait_until_complete()
    return {"message": "Stream completed successfully", "seen": seen}


# -- pipe without a key (the "default" stream), not awaited ------------------------------------


@task(id="pipe-default.async")
async def pipe_default_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    piped = streams.pipe(tokens(payload["chunks"]))  # not awaited: the run waits for it
    seen = [chunk async for chunk in piped.stream]
    return {"seen": seen}


@task(id="pipe-default.sync")
def pipe_default_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    piped = sync_streams.pipe(blocking_tokens(payload["chunks"]))
    seen = list(piped.stream)
    return {"seen": seen}


# -- targets: a root run, its child and its grandchild write to self, parent, root and ids ------
#
# Every append is awaited before the next one, so each stream's order is fixed:
#   root's "family":       root self/parent/root, child parent/root/root id/parent id,
#                          grandchild root/run id
#   child's "family":      child self, grandchild parent
#   grandchild's "family": grandchild self


def note(level: str, target: str) -> dict[str, str]:
    return {"from": level, "target": target}


@task(id="family-root.async")
async def family_root_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    for target in ("self", "parent", "root"):  # in a root run, all three are the run itself
        await streams.append("family", note("root", target), target=target)
    child = await family_child_async.trigger_and_wait({"root_run_id": ctx.run.id})
    return {"run": run_ids(ctx), "child": {"id": child.id, "ok": child.ok, "output": child.output}}


@task(id="family-child.async")
async def family_child_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    await streams.append("family", note("child", "self"))
    await streams.append("family", note("child", "parent"), target="parent")
    await streams.append("family", note("child", "root"), target="root")
    # The seed's forms: ctx.run's ids as targets, for a pipe and a writer.
    piped = streams.pipe(
        "family",
        tokens([note("child", "root_task_run_id")]),
        target=ctx.run.root_task_run_id,
    )
    await piped.wait_until_complete()
    written = streams.writer(
        "family",
        execute=lambda w: w.write(note("child", "parent_task_run_id")),
        target=ctx.run.parent_task_run_id,
    )
    await written.wait_until_complete()
    grandchild = await family_grandchild_async.trigger_and_wait(
        {"other_run_id": payload["root_run_id"]}
    )
    return {
        "run": run_ids(ctx),
        "grandchild": {"id": grandchild.id, "ok": grandchild.ok, "output": grandchild.output},
    }


@task(id="family-grandchild.async")
async def family_grandchild_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    await streams.append("family", note("grandchild", "self"), target="self")
    await streams.append("family", note("grandchild", "parent"), target="parent")
    await streams.append("family", note("grandchild", "root"), target="root")
    await streams.append("family", note("grandchild", "run id"), target=payload["other_run_id"])
    return {"run": run_ids(ctx)}


@task(id="family-root.sync")
def family_root_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    for target in ("self", "parent", "root"):
        sync_streams.append("family", note("root", target), target=target)
    child = family_child_sync.trigger_and_wait_sync({"root_run_id": ctx.run.id})
    return {"run": run_ids(ctx), "child": {"id": child.id, "ok": child.ok, "output": child.output}}


@task(id="family-child.sync")
def family_child_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    sync_streams.append("family", note("child", "self"))
    sync_streams.append("family", note("child", "parent"), target="parent")
    sync_streams.append("family", note("child", "root"), target="root")
    sync_streams.pipe(
        "family",
        blocking_tokens([note("child", "root_task_run_id")]),
        target=ctx.run.root_task_run_id,
    ).wait_until_complete()
    sync_streams.writer(
        "family",
        execute=lambda w: w.write(note("child", "parent_task_run_id")),
        target=ctx.run.parent_task_run_id,
    ).wait_until_complete()
    grandchild = family_grandchild_sync.trigger_and_wait_sync(
        {"other_run_id": payload["root_run_id"]}
    )
    return {
        "run": run_ids(ctx),
        "grandchild": {"id": grandchild.id, "ok": grandchild.ok, "output": grandchild.output},
    }


@task(id="family-grandchild.sync")
def family_grandchild_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    sync_streams.append("family", note("grandchild", "self"), target="self")
    sync_streams.append("family", note("grandchild", "parent"), target="parent")
    sync_streams.append("family", note("grandchild", "root"), target="root")
    sync_streams.append("family", note("grandchild", "run id"), target=payload["other_run_id"])
    return {"run": run_ids(ctx)}


# -- writer: write twice, merge a list and an async generator; not awaited ---------------------


@task(id="writer.async")
async def writer_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    async def execute(w: StreamWriter) -> None:
        w.write(WRITER_CHUNKS[0])
        w.write(WRITER_CHUNKS[1])
        w.merge([WRITER_CHUNKS[2], WRITER_CHUNKS[3]])
        w.merge(tokens(WRITER_CHUNKS[4:], delay=0.01))

    streams.writer("my-stream", execute=execute)
    return {"written": True}


@task(id="writer.sync")
def writer_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    def execute(w: StreamWriter) -> None:
        w.write(WRITER_CHUNKS[0])
        w.write(WRITER_CHUNKS[1])
        w.merge([WRITER_CHUNKS[2], WRITER_CHUNKS[3]])
        w.merge(tokens(WRITER_CHUNKS[4:], delay=0.01))

    sync_streams.writer("my-stream", execute=execute)
    return {"written": True}


# -- append ------------------------------------------------------------------------------------


@task(id="append.async")
async def append_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    await streams.append("my-stream", "Hello, world!")
    await streams.append("my-stream", {"n": 2})
    await streams.append("no key")  # the "default" stream
    return {"appended": 3}


@task(id="append.sync")
def append_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    sync_streams.append("my-stream", "Hello, world!")
    sync_streams.append("my-stream", {"n": 2})
    sync_streams.append("no key")
    return {"appended": 3}


# -- define: the module-level definition pipes, appends and writes -----------------------------


@task(id="define.async")
async def define_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    await answer.pipe(tokens(payload["chunks"])).wait_until_complete()
    await answer.append("Hello, world!")
    answer.writer(execute=lambda w: (w.write("Hello, world 2!"), w.merge(["Hello, world 3!"])))
    return {"stream": answer.id}


@task(id="define.sync")
def define_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    sync_answer.pipe(blocking_tokens(payload["chunks"])).wait_until_complete()
    sync_answer.append("Hello, world!")
    sync_answer.writer(execute=lambda w: (w.write("Hello, world 2!"), w.merge(["Hello, world 3!"])))
    return {"stream": sync_answer.id}


# -- two pipes into one stream at once ---------------------------------------------------------


@task(id="two-pipes.async")
async def two_pipes_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    first = streams.pipe("shared", tokens([f"a{i}" for i in range(TWO_PIPES)], delay=0.002))
    second = streams.pipe("shared", tokens([f"b{i}" for i in range(TWO_PIPES)], delay=0.002))
    await asyncio.gather(first.wait_until_complete(), second.wait_until_complete())
    return {"pipes": 2}


@task(id="two-pipes.sync")
def two_pipes_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    first = sync_streams.pipe(
        "shared", blocking_tokens([f"a{i}" for i in range(TWO_PIPES)], delay=0.002)
    )
    second = sync_streams.pipe(
        "shared", blocking_tokens([f"b{i}" for i in range(TWO_PIPES)], delay=0.002)
    )
    first.wait_until_complete()
    second.wait_until_complete()
    return {"pipes": 2}


# -- a task that raises while its pipe is still sending ----------------------------------------


@task(id="fails.async")
async def fails_async(payload: Any, ctx: TaskContext) -> None:
    streams.pipe("partial", tokens(FAILING_PIPE, delay=0.05))
    raise ValueError("boom: the task failed")


@task(id="fails.sync")
def fails_sync(payload: Any, ctx: TaskContext) -> None:
    sync_streams.pipe("partial", blocking_tokens(FAILING_PIPE, delay=0.05))
    raise ValueError("boom: the task failed")


# -- a pipe whose source raises after two chunks -----------------------------------------------


class SourceBroke(Exception):
    pass


async def broken_tokens() -> AsyncIterator[str]:
    yield "before-0"
    yield "before-1"
    raise SourceBroke("the source broke after two chunks")


def blocking_broken_tokens() -> Iterator[str]:
    yield "before-0"
    yield "before-1"
    raise SourceBroke("the source broke after two chunks")


@task(id="source-fails.async")
async def source_fails_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    piped = streams.pipe("broken", broken_tokens())
    seen: list[Any] = []
    try:
        async for chunk in piped.stream:
            seen.append(chunk)
    except SourceBroke as error:
        seen.append(f"tee raised {type(error).__name__}")
    await streams.append("tee-saw", seen)
    return {"seen": seen}


@task(id="source-fails.sync")
def source_fails_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    piped = sync_streams.pipe("broken", blocking_broken_tokens())
    seen: list[Any] = []
    try:
        for chunk in piped.stream:
            seen.append(chunk)
    except SourceBroke as error:
        seen.append(f"tee raised {type(error).__name__}")
    sync_streams.append("tee-saw", seen)
    return {"seen": seen}


# -- a slow pipe that the task does not wait for -----------------------------------------------


@task(id="slow-pipe.async")
async def slow_pipe_async(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    streams.pipe("slow", tokens(SLOW_CHUNKS, delay=SLOW_DELAY))
    return {"returned": "before the pipe finished"}


@task(id="slow-pipe.sync")
def slow_pipe_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    sync_streams.pipe("slow", blocking_tokens(SLOW_CHUNKS, delay=SLOW_DELAY))
    return {"returned": "before the pipe finished"}
