"""The Python SDK against a real server and a real worker: every example of Trigger.dev's Realtime
Streams v2 PR (the seed), in snake_case, through both faces of the SDK.

Each test that runs tasks takes ``face``: the asyncio API (``sdk``, driven with ``asyncio.run``)
running the ``async def`` tasks of tests/sdk_tasks.py, or the blocking API (``runstream.sync``)
running their plain ``def`` twins. The worker is a real ``runstream worker --tasks sdk_tasks``
subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sdk_tasks
from conftest import HANG_GUARD, SECRET_KEY, ServerProcess, arun, start_server, within
from sdk_tasks import FAILING_PIPE, SLOW_CHUNKS, TWO_PIPES, WRITER_CHUNKS, note

import runstream.sync
from runstream import (
    ApiError,
    RunstreamError,
    StreamWriteError,
    StreamWriter,
    Task,
    TaskContext,
    TaskRunResult,
    TriggeredRun,
    auth,
    configure,
    runs,
    streams,
    task,
)
from runstream.runs import Run, RunStream
from runstream.sync import streams as sync_streams

T = TypeVar("T")
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
READ_TIMEOUT = 30


# -- a run that no worker ever claims: its streams are written from outside any task -----------


@task(id="sdk-tests.never-claimed")
def never_claimed(payload: Any, ctx: TaskContext) -> None:
    raise AssertionError("no worker serves this task: tests/sdk_tasks.py does not declare it")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def sdk_configured(server: ServerProcess) -> None:
    """The SDK in this process talks to the test server with the secret key."""
    configure(api_url=server.url, secret_key=SECRET_KEY)


@dataclass
class WorkerProcess:
    """A ``runstream worker --tasks sdk_tasks`` subprocess and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> int:
        """SIGTERM: the worker stops claiming, finishes its running runs and exits; its code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the worker did not stop on SIGTERM:\n{self.log_path.read_text()}"
            ) from None


def start_worker(server: ServerProcess, log_dir: Path, *, concurrency: int) -> WorkerProcess:
    """Start ``runstream worker --tasks sdk_tasks`` on ``server`` and wait until it runs."""
    log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runstream.server",
                "worker",
                "--tasks",
                "sdk_tasks",
                "--concurrency",
                str(concurrency),
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(TESTS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "RUNSTREAM_API_URL": server.url,
                "RUNSTREAM_SECRET_KEY": SECRET_KEY,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while b"worker: running" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the worker did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return WorkerProcess(process, log_path)


@pytest.fixture(scope="module")
def worker(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """``runstream worker --tasks sdk_tasks --concurrency 4``, stopped with SIGTERM at the end."""
    worker = start_worker(server, tmp_path_factory.mktemp("worker"), concurrency=4)
    yield worker
    code = worker.stop()
    assert code == 0, f"the worker exited with {code}:\n{worker.log_path.read_text()}"


# -- the two faces -----------------------------------------------------------------------------


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


class Face:
    """The calls the tests make, through one face of the SDK."""

    flavour: str
    answer: Any  # the face's streams.define(id="answer") of tests/sdk_tasks.py

    def task(self, name: str) -> Task[Any]:
        return sdk_tasks.flavour_task(name, self.flavour)

    def trigger(self, task: Task[Any], payload: Any = None) -> TriggeredRun:
        raise NotImplementedError

    def trigger_and_wait(self, task: Task[Any], payload: Any = None) -> TaskRunResult[Any]:
        raise NotImplementedError

    def read(self, run_id: str, *key: str, **options: Any) -> list[Any]:
        return self.read_on(run_id, *key, **options)[0]

    def read_on(self, run_id: str, *key: str, **options: Any) -> tuple[list[Any], int]:
        """Every chunk read, and the read's ``next_index``."""
        raise NotImplementedError

    def read_defined(self, run_id: str) -> list[Any]:
        raise NotImplementedError

    def retrieve(self, run_id: str, **options: Any) -> Run:
        raise NotImplementedError

    def wait(self, run_id: str) -> Run:
        raise NotImplementedError

    def cancel(self, run_id: str) -> Run:
        raise NotImplementedError

    def create_public_token(self, **options: Any) -> str:
        raise NotImplementedError


class AsyncFace(Face):
    """``from sdk import streams, runs, auth``: coroutines, each run with ``asyncio.run``."""

    flavour = "async"
    answer = sdk_tasks.answer

    def trigger(self, task: Task[Any], payload: Any = None) -> TriggeredRun:
        return arun(task.trigger(payload))

    def trigger_and_wait(self, task: Task[Any], payload: Any = None) -> TaskRunResult[Any]:
        return arun(task.trigger_and_wait(payload))

    def read_on(self, run_id: str, *key: str, **options: Any) -> tuple[list[Any], int]:
        options.setdefault("timeout_in_seconds", READ_TIMEOUT)

        async def read() -> tuple[list[Any], int]:
            stream = await streams.read(run_id, *key, **options)
            return await collect(stream), stream.next_index

        return arun(read())

    def read_defined(self, run_id: str) -> list[Any]:
        async def read() -> list[Any]:
            return await collect(
                await sdk_tasks.answer.read(run_id, timeout_in_seconds=READ_TIMEOUT)
            )

        return arun(read())

    def retrieve(self, run_id: str, **options: Any) -> Run:
        return arun(runs.retrieve(run_id, **options))

    def wait(self, run_id: str) -> Run:
        return arun(runs.wait_until_finished(run_id))

    def cancel(self, run_id: str) -> Run:
        return arun(runs.cancel(run_id))

    def create_public_token(self, **options: Any) -> str:
        return auth.create_public_token(**options)


class BlockingFace(Face):
    """``from runstream.sync import streams, runs, auth`` and ``task.trigger_sync(...)``."""

    flavour = "sync"
    answer = sdk_tasks.sync_answer

    def trigger(self, task: Task[Any], payload: Any = None) -> TriggeredRun:
        return within(HANG_GUARD, lambda: task.trigger_sync(payload))

    def trigger_and_wait(self, task: Task[Any], payload: Any = None) -> TaskRunResult[Any]:
        return within(HANG_GUARD, lambda: task.trigger_and_wait_sync(payload))

    def read_on(self, run_id: str, *key: str, **options: Any) -> tuple[list[Any], int]:
        options.setdefault("timeout_in_seconds", READ_TIMEOUT)

        def read() -> tuple[list[Any], int]:
            stream = sync_streams.read(run_id, *key, **options)
            return list(stream), stream.next_index

        return within(HANG_GUARD, read)

    def read_defined(self, run_id: str) -> list[Any]:
        return within(
            HANG_GUARD,
            lambda: list(sdk_tasks.sync_answer.read(run_id, timeout_in_seconds=READ_TIMEOUT)),
        )

    def retrieve(self, run_id: str, **options: Any) -> Run:
        return within(HANG_GUARD, lambda: runstream.sync.runs.retrieve(run_id, **options))

    def wait(self, run_id: str) -> Run:
        return within(HANG_GUARD, lambda: runstream.sync.runs.wait_until_finished(run_id))

    def cancel(self, run_id: str) -> Run:
        return within(HANG_GUARD, lambda: runstream.sync.runs.cancel(run_id))

    def create_public_token(self, **options: Any) -> str:
        return runstream.sync.auth.create_public_token(**options)


@pytest.fixture(params=[AsyncFace(), BlockingFace()], ids=["asyncio", "blocking"])
def face(request: pytest.FixtureRequest) -> Face:
    face: Face = request.param
    return face


def streams_of(run: Run) -> dict[str, tuple[int, bool]]:
    """A run's streams as ``{key: (chunk_count, closed)}``."""
    return {stream.key: (stream.chunk_count, stream.closed) for stream in run.streams}


def one_stream(run: Run, key: str) -> RunStream:
    (found,) = [stream for stream in run.streams if stream.key == key]
    return found


# -- pipe ----------------------------------------------------------------------------------------


def test_pipe_in_a_task_stores_every_chunk_in_order_and_its_stream_is_a_copy(
    face: Face, worker: WorkerProcess
) -> None:
    """``streams.pipe("ai-stream", source)`` in a task: a reader that starts with the run gets
    every chunk in order, then the end; the task's ``piped.stream`` saw the same chunks; the run
    completes with its output."""
    chunks: list[Any] = [f"token {i} " for i in range(40)] + [{"done": True}, 7, None, ["x"]]

    handle = face.trigger(face.task("pipe-key"), {"chunks": chunks})
    read_live = face.read(handle.id, "ai-stream")  # from before the first chunk until the end

    run = face.retrieve(handle.id)
    assert read_live == chunks
    assert run.status == "COMPLETED"
    assert run.output == {"message": "Stream completed successfully", "seen": chunks}
    assert streams_of(run) == {"ai-stream": (len(chunks), True)}
    assert face.read(handle.id, "ai-stream") == chunks  # and again, from storage


def test_pipe_without_a_key_writes_the_default_stream_and_the_run_waits_for_it(
    face: Face, worker: WorkerProcess
) -> None:
    """``streams.pipe(source)``, not awaited: the chunks go to the "default" stream, which
    ``streams.read(run_id)`` reads, and the run completes only once they are stored."""
    chunks = [f"part-{i}" for i in range(30)]

    result = face.trigger_and_wait(face.task("pipe-default"), {"chunks": chunks})

    assert result.ok, result.error
    assert result.output == {"seen": chunks}
    assert face.read(result.id) == chunks
    assert face.read(result.id, "default") == chunks
    assert streams_of(face.retrieve(result.id)) == {"default": (len(chunks), True)}


def test_a_pipe_the_task_does_not_wait_for_holds_the_run_open_until_delivered(
    face: Face, worker: WorkerProcess
) -> None:
    """A task that returns while its slow pipe is still sending: the run is not COMPLETED until
    every chunk is stored, so the first time it is seen COMPLETED its stream is whole."""
    handle = face.trigger(face.task("slow-pipe"))

    run = face.wait(handle.id)  # the first final status seen

    assert run.status == "COMPLETED", run.error
    assert run.output == {"returned": "before the pipe finished"}
    slow = one_stream(run, "slow")
    assert (slow.chunk_count, slow.closed) == (len(SLOW_CHUNKS), True)
    assert face.read(handle.id, "slow") == SLOW_CHUNKS


def test_two_pipes_into_one_stream_interleave_keeping_each_pipes_order(
    face: Face, worker: WorkerProcess
) -> None:
    """Two pipes writing one stream at once: every chunk of each is stored exactly once, and
    each pipe's chunks keep their order."""
    result = face.trigger_and_wait(face.task("two-pipes"))

    assert result.ok, result.error
    stored = face.read(result.id, "shared")
    assert sorted(stored) == sorted(
        [f"a{i}" for i in range(TWO_PIPES)] + [f"b{i}" for i in range(TWO_PIPES)]
    )
    assert [chunk for chunk in stored if chunk.startswith("a")] == [
        f"a{i}" for i in range(TWO_PIPES)
    ]
    assert [chunk for chunk in stored if chunk.startswith("b")] == [
        f"b{i}" for i in range(TWO_PIPES)
    ]


# -- targets -------------------------------------------------------------------------------------


def test_targets_self_parent_root_and_run_ids_across_three_generations(
    face: Face, worker: WorkerProcess
) -> None:
    """A root run triggers-and-waits a child, which triggers-and-waits a grandchild; each appends
    to "self", "parent", "root" and a run id. In the root run, "parent" and "root" are the run
    itself; in the grandchild, "parent" is the child and "root" the root. ``runs.retrieve``
    reports the parent and root ids, the children, and each stream's chunk count."""
    result = face.trigger_and_wait(face.task("family-root"))

    assert result.ok, result.error
    root_id = result.id
    child = result.output["child"]
    assert child["ok"], child
    child_id = child["id"]
    grandchild = child["output"]["grandchild"]
    assert grandchild["ok"], grandchild
    grandchild_id = grandchild["id"]
    assert len({root_id, child_id, grandchild_id}) == 3
    # ctx.run inside each task
    assert result.output["run"] == {"id": root_id, "parent": None, "root": root_id}
    assert child["output"]["run"] == {"id": child_id, "parent": root_id, "root": root_id}
    assert grandchild["output"]["run"] == {"id": grandchild_id, "parent": child_id, "root": root_id}

    root_family = [
        note("root", "self"),
        note("root", "parent"),
        note("root", "root"),
        note("child", "parent"),
        note("child", "root"),
        note("child", "root_task_run_id"),
        note("child", "parent_task_run_id"),
        note("grandchild", "root"),
        note("grandchild", "run id"),
    ]
    assert face.read(root_id, "family") == root_family
    assert face.read(child_id, "family") == [note("child", "self"), note("grandchild", "parent")]
    assert face.read(grandchild_id, "family") == [note("grandchild", "self")]

    root_run, child_run, grandchild_run = (
        face.retrieve(run_id) for run_id in (root_id, child_id, grandchild_id)
    )
    assert [run.status for run in (root_run, child_run, grandchild_run)] == ["COMPLETED"] * 3
    assert (root_run.parent_run_id, root_run.root_run_id) == (None, root_id)
    assert (child_run.parent_run_id, child_run.root_run_id) == (root_id, root_id)
    assert (grandchild_run.parent_run_id, grandchild_run.root_run_id) == (child_id, root_id)
    assert root_run.child_run_ids == (child_id,)
    assert child_run.child_run_ids == (grandchild_id,)
    assert grandchild_run.child_run_ids == ()
    assert root_run.task_id == f"family-root.{face.flavour}"
    assert streams_of(root_run) == {"family": (len(root_family), True)}
    assert streams_of(child_run) == {"family": (2, True)}
    assert streams_of(grandchild_run) == {"family": (1, True)}
    assert child_run.output == child["output"]


# -- writer, append, define ----------------------------------------------------------------------


def test_writer_in_a_task_writes_and_merges_a_list_and_an_async_generator(
    face: Face, worker: WorkerProcess
) -> None:
    """``streams.writer("my-stream", execute=...)`` with two ``write`` calls, then ``merge`` of a
    list and of an async generator, not awaited: the writes come first, in order; each merged
    source keeps its order; nothing is lost or repeated; the run waits for all of it."""
    result = face.trigger_and_wait(face.task("writer"))

    assert result.ok, result.error
    assert result.output == {"written": True}
    stored = face.read(result.id, "my-stream")
    assert stored[:2] == WRITER_CHUNKS[:2]
    assert sorted(stored[2:]) == sorted(WRITER_CHUNKS[2:])
    assert [chunk for chunk in stored if chunk in WRITER_CHUNKS[2:4]] == WRITER_CHUNKS[2:4]
    assert [chunk for chunk in stored if chunk in WRITER_CHUNKS[4:]] == WRITER_CHUNKS[4:]


def test_append_in_a_task_adds_one_chunk_each(face: Face, worker: WorkerProcess) -> None:
    """``streams.append("my-stream", "Hello, world!")`` in a task; without a key it appends to
    the "default" stream. Strings stay strings, objects stay objects."""
    result = face.trigger_and_wait(face.task("append"))

    assert result.ok, result.error
    assert face.read(result.id, "my-stream") == ["Hello, world!", {"n": 2}]
    assert face.read(result.id) == ["no key"]
    assert streams_of(face.retrieve(result.id)) == {
        "my-stream": (2, True),
        "default": (1, True),
    }


def test_define_declares_a_stream_used_to_pipe_append_write_and_read(
    face: Face, worker: WorkerProcess
) -> None:
    """``answer = streams.define(id="answer", type=str)``: its ``pipe``, ``append`` and
    ``writer`` in a task and its ``read`` outside all use the stream "answer"."""
    chunks = ["Durable ", "streams ", "never ", "lose ", "a ", "token."]

    result = face.trigger_and_wait(face.task("define"), {"chunks": chunks})

    assert result.ok, result.error
    assert result.output == {"stream": "answer"}
    assert face.answer.id == "answer"
    expected = [*chunks, "Hello, world!", "Hello, world 2!", "Hello, world 3!"]
    assert face.read_defined(result.id) == expected
    assert face.read(result.id, "answer") == expected


# -- failures inside tasks -----------------------------------------------------------------------


def test_a_task_that_raises_fails_its_run_and_its_streams_still_end(
    face: Face, worker: WorkerProcess
) -> None:
    """A task that raises while its pipe is still sending: the run is FAILED with the error's
    name and message; the pipe's chunks are all stored and the stream ends."""
    result = face.trigger_and_wait(face.task("fails"))

    assert not result.ok
    assert result.output is None
    assert result.error["name"] == "ValueError"
    assert result.error["message"] == "boom: the task failed"
    assert "boom: the task failed" in result.error["stack"]
    with pytest.raises(RuntimeError, match="did not complete"):
        result.unwrap()
    run = face.retrieve(result.id)
    assert run.status == "FAILED"
    assert run.error == result.error
    assert streams_of(run) == {"partial": (len(FAILING_PIPE), True)}
    assert face.read(result.id, "partial") == FAILING_PIPE


def test_a_pipe_whose_source_raises_keeps_what_came_before_and_fails_the_run(
    face: Face, worker: WorkerProcess
) -> None:
    """A pipe whose source raises after two chunks: ``piped.stream`` yields the two chunks then
    raises the source's error; the two chunks are stored and the stream ends; the run, which
    waits for its pipes, is FAILED with the source's error."""
    result = face.trigger_and_wait(face.task("source-fails"))

    assert not result.ok
    assert result.error["name"] == "SourceBroke"
    assert result.error["message"] == "the source broke after two chunks"
    run = face.retrieve(result.id)
    assert run.status == "FAILED"
    assert face.read(result.id, "broken") == ["before-0", "before-1"]
    assert face.read(result.id, "tee-saw") == [["before-0", "before-1", "tee raised SourceBroke"]]
    assert streams_of(run) == {"broken": (2, True), "tee-saw": (1, True)}


# -- reading -------------------------------------------------------------------------------------


def test_read_from_a_start_index(face: Face, worker: WorkerProcess) -> None:
    """``streams.read(run_id, key, timeout_in_seconds=10, start_index=10)`` yields the chunks
    from index 10 on; ``next_index`` is where a next read resumes; a start past the end of an
    ended stream yields nothing."""
    chunks = [f"c{i}" for i in range(15)]
    result = face.trigger_and_wait(face.task("pipe-key"), {"chunks": chunks})
    assert result.ok, result.error

    assert face.read_on(result.id, "ai-stream", timeout_in_seconds=10, start_index=10) == (
        chunks[10:],
        15,
    )
    assert face.read_on(result.id, "ai-stream", start_index=0) == (chunks, 15)
    assert face.read_on(result.id, "ai-stream", start_index=14) == (chunks[14:], 15)
    assert face.read_on(result.id, "ai-stream", start_index=15) == ([], 15)
    assert face.read_on(result.id, "ai-stream", start_index=40) == ([], 40)


def test_a_read_that_gets_no_data_ends_after_its_timeout_without_error(face: Face) -> None:
    """A read of a stream nobody writes ends quietly after ``timeout_in_seconds``; so does a read
    that got every stored chunk of a stream that stays open."""
    handle = face.trigger(never_claimed)
    sync_streams.append("some", "only chunk", target=handle.id)

    assert face.read_on(handle.id, "nothing", timeout_in_seconds=1) == ([], 0)
    assert face.read_on(handle.id, "some", timeout_in_seconds=1) == (["only chunk"], 1)
    assert face.read_on(handle.id, "some", timeout_in_seconds=1, start_index=1) == ([], 1)
    run = face.cancel(handle.id)
    assert run.status == "CANCELED"


def test_retrieve_after_waits_for_the_runs_next_change(face: Face) -> None:
    """``retrieve(after=updated_at, wait_in_seconds=...)`` answers once the run changes (here:
    canceled while the call waits), or when the wait is over with the run as it was."""
    handle = face.trigger(never_claimed)
    queued = face.retrieve(handle.id)
    canceling = threading.Timer(0.5, lambda: runstream.sync.runs.cancel(handle.id))
    canceling.start()
    try:
        changed = face.retrieve(handle.id, after=queued.updated_at, wait_in_seconds=10)
    finally:
        canceling.join()
    assert changed.status == "CANCELED"
    assert changed.updated_at != queued.updated_at
    started = time.monotonic()
    same = face.retrieve(handle.id, after=changed.updated_at, wait_in_seconds=1)
    assert same.updated_at == changed.updated_at
    assert time.monotonic() - started >= 0.9  # it waited for news that never came


def test_read_rejects_bad_arguments_before_connecting() -> None:
    """``timeout_in_seconds`` must be from 1 to 600 and ``start_index`` 0 or more."""
    for options in ({"timeout_in_seconds": 0}, {"timeout_in_seconds": 601}, {"start_index": -1}):
        with pytest.raises(ValueError):
            arun(streams.read("run_abc", "k", **options))
        with pytest.raises(ValueError):
            sync_streams.read("run_abc", "k", **options)


def test_reading_a_run_that_does_not_exist_is_a_404(face: Face) -> None:
    with pytest.raises(ApiError) as refused:
        face.read("run_doesnotexist000", "ai-stream")
    assert refused.value.status == 404


# -- outside a task ------------------------------------------------------------------------------


async def tokens(chunks: list[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


def test_outside_a_task_pipe_append_and_writer_write_the_run_named_by_target_asyncio() -> None:
    """The seed's route handler: ``streams.pipe("ai-stream", source, target=run_id)`` outside any
    task, returning ``piped.stream`` to its caller; also ``append`` and ``writer`` with a target,
    and a pipe to the default stream."""

    async def scenario() -> tuple[str, list[Any]]:
        handle = await never_claimed.trigger({"messages": ["hi"]})
        piped = streams.pipe("ai-stream", tokens(["Hel", "lo", "!"]), target=handle.id)
        seen = await collect(piped.stream)  # what the route would return
        await piped.wait_until_complete()
        await streams.append("ai-stream", {"finish": "stop"}, target=handle.id)
        written = streams.writer(
            "ai-stream", execute=lambda w: w.write("from a writer"), target=handle.id
        )
        await written.wait_until_complete()
        await streams.pipe(["x", "y"], target=handle.id).wait_until_complete()
        await runs.cancel(handle.id)  # the run ends, and with it its streams
        return handle.id, seen

    run_id, seen = arun(scenario())

    assert seen == ["Hel", "lo", "!"]
    assert arun(collect_read(run_id, "ai-stream")) == [
        "Hel",
        "lo",
        "!",
        {"finish": "stop"},
        "from a writer",
    ]
    assert arun(collect_read(run_id)) == ["x", "y"]
    run = arun(runs.retrieve(run_id))
    assert streams_of(run) == {"ai-stream": (5, True), "default": (2, True)}


async def pipe_and_wait(key: str, source: Any, *, target: str) -> None:
    await streams.pipe(key, source, target=target).wait_until_complete()


async def collect_read(run_id: str, *key: str) -> list[Any]:
    return await collect(await streams.read(run_id, *key, timeout_in_seconds=READ_TIMEOUT))


def test_outside_a_task_pipe_append_and_writer_write_the_run_named_by_target_blocking() -> None:
    """The same with ``runstream.sync``: a blocking source, a blocking stream, blocking waits."""

    def scenario() -> None:
        handle = never_claimed.trigger_sync({"messages": ["hi"]})
        piped = sync_streams.pipe("ai-stream", iter(["Hel", "lo", "!"]), target=handle.id)
        assert list(piped.stream) == ["Hel", "lo", "!"]
        piped.wait_until_complete()
        sync_streams.append("ai-stream", {"finish": "stop"}, target=handle.id)
        sync_streams.writer(
            "ai-stream", execute=lambda w: w.write("from a writer"), target=handle.id
        ).wait_until_complete()
        sync_streams.pipe(["x", "y"], target=handle.id).wait_until_complete()
        runstream.sync.runs.cancel(handle.id)

        assert list(sync_streams.read(handle.id, "ai-stream", timeout_in_seconds=READ_TIMEOUT)) == [
            "Hel",
            "lo",
            "!",
            {"finish": "stop"},
            "from a writer",
        ]
        assert list(sync_streams.read(handle.id, timeout_in_seconds=READ_TIMEOUT)) == ["x", "y"]
        run = runstream.sync.runs.retrieve(handle.id)
        assert streams_of(run) == {"ai-stream": (5, True), "default": (2, True)}

    within(HANG_GUARD, scenario)


@pytest.mark.parametrize("target", [None, "self", "parent", "root"])
def test_outside_a_task_a_missing_run_id_is_a_clear_error(target: str | None) -> None:
    """Outside a task there is no current run: pipe, append and writer without a run id raise
    RunstreamError saying to pass ``target=<run id>``, in both faces, before sending anything."""
    options = {} if target is None else {"target": target}
    expected = r"outside a task there is no current run: pass target=<run id>"

    async def scenario() -> None:
        with pytest.raises(RunstreamError, match=expected):
            streams.pipe("ai-stream", ["a"], **options)
        with pytest.raises(RunstreamError, match=expected):
            await streams.append("my-stream", "Hello", **options)
        with pytest.raises(RunstreamError, match=expected):
            streams.writer("my-stream", execute=lambda w: w.write("a"), **options)
        with pytest.raises(RunstreamError, match=expected):
            sdk_tasks.answer.pipe(["a"], **options)

    arun(scenario())
    with pytest.raises(RunstreamError, match=expected):
        sync_streams.pipe("ai-stream", ["a"], **options)
    with pytest.raises(RunstreamError, match=expected):
        sync_streams.append("my-stream", "Hello", **options)
    with pytest.raises(RunstreamError, match=expected):
        sync_streams.writer("my-stream", execute=lambda w: w.write("a"), **options)
    with pytest.raises(RunstreamError, match=expected):
        sdk_tasks.sync_answer.append("a", **options)


def test_a_target_that_is_neither_a_keyword_nor_a_run_id_is_refused() -> None:
    with pytest.raises(RunstreamError, match="run id"):
        sync_streams.append("my-stream", "Hello", target="my-run")
    with pytest.raises(RunstreamError, match="run id"):
        arun(streams.append("my-stream", "Hello", target="Run_123"))


def test_writing_to_a_missing_run_or_with_a_bad_key_raises_stream_write_error(face: Face) -> None:
    """The server's refusals end a write at once with StreamWriteError: a run that does not
    exist, a key the server does not accept."""
    handle = face.trigger(never_claimed)
    try:
        with pytest.raises(StreamWriteError, match="does not exist"):
            sync_streams.append("my-stream", "Hello", target="run_doesnotexist000")
        with pytest.raises(StreamWriteError, match="does not exist"):
            arun(pipe_and_wait("my-stream", ["a"], target="run_doesnotexist000"))
        with pytest.raises(StreamWriteError, match="invalid stream key"):
            sync_streams.append("not a key!", "Hello", target=handle.id)
    finally:
        face.cancel(handle.id)


@pytest.mark.parametrize("execute_kind", ["plain", "async"])
def test_a_writers_execute_may_be_a_plain_or_an_async_function(
    face: Face, execute_kind: str
) -> None:
    """``execute`` may be a plain function (run in a thread) or an async function; either way its
    writes and merges are all stored, writes before merges, and ``wait_until_complete`` waits
    for the merges too."""

    async def later() -> AsyncIterator[str]:
        for chunk in ["m1", "m2", "m3"]:
            await asyncio.sleep(0.01)
            yield chunk

    def plain(w: StreamWriter) -> None:
        w.write("w1")
        w.write({"w": 2})
        w.merge(later())

    async def coroutine(w: StreamWriter) -> None:
        w.write("w1")
        await asyncio.sleep(0)
        w.write({"w": 2})
        w.merge(later())

    execute = plain if execute_kind == "plain" else coroutine
    handle = face.trigger(never_claimed)
    if face.flavour == "async":

        async def scenario() -> None:
            await streams.writer("out", execute=execute, target=handle.id).wait_until_complete()

        arun(scenario())
    else:
        within(
            HANG_GUARD,
            lambda: sync_streams.writer(
                "out", execute=execute, target=handle.id
            ).wait_until_complete(),
        )
    face.cancel(handle.id)

    assert face.read(handle.id, "out") == ["w1", {"w": 2}, "m1", "m2", "m3"]


def test_a_writer_whose_execute_raises_stores_what_it_wrote_and_raises(face: Face) -> None:
    """An ``execute`` that raises: what it wrote before is stored, the stream writer says it is
    done, and ``wait_until_complete`` raises the same error."""

    def execute(w: StreamWriter) -> None:
        w.write("before")
        raise KeyError("inside execute")

    handle = face.trigger(never_claimed)
    if face.flavour == "async":

        async def scenario() -> None:
            await streams.writer("out", execute=execute, target=handle.id).wait_until_complete()

        with pytest.raises(KeyError, match="inside execute"):
            arun(scenario())
    else:
        with pytest.raises(KeyError, match="inside execute"):
            within(
                HANG_GUARD,
                lambda: sync_streams.writer(
                    "out", execute=execute, target=handle.id
                ).wait_until_complete(),
            )
    face.cancel(handle.id)

    assert face.read(handle.id, "out") == ["before"]
    assert streams_of(face.retrieve(handle.id)) == {"out": (1, True)}


# -- public access tokens ------------------------------------------------------------------------


def test_a_public_token_reads_its_run_and_is_refused_another(
    face: Face, worker: WorkerProcess
) -> None:
    """``auth.create_public_token(read_runs=[run_id], expiration="1h")`` reads that run's streams
    and the run itself with ``access_token=``; another run is refused with ApiError 403. The
    ``public_access_token`` of a trigger reads its own run; ``read_runs=True`` reads every run."""
    chunks = ["a", "b", "c"]
    first = face.trigger(face.task("pipe-key"), {"chunks": chunks})
    other = face.trigger(face.task("pipe-key"), {"chunks": ["other"]})
    face.wait(first.id)
    face.wait(other.id)

    token = face.create_public_token(read_runs=[first.id], expiration="1h")

    assert face.read(first.id, "ai-stream", access_token=token) == chunks
    assert face.retrieve(first.id, access_token=token).status == "COMPLETED"
    with pytest.raises(ApiError) as refused:
        face.read(other.id, "ai-stream", access_token=token)
    assert refused.value.status == 403
    with pytest.raises(ApiError) as refused:
        face.retrieve(other.id, access_token=token)
    assert refused.value.status == 403

    assert face.read(other.id, "ai-stream", access_token=other.public_access_token) == ["other"]
    with pytest.raises(ApiError) as refused:
        face.read(first.id, "ai-stream", access_token=other.public_access_token)
    assert refused.value.status == 403

    every_run = face.create_public_token(read_runs=True, expiration=600)
    assert face.read(first.id, "ai-stream", access_token=every_run) == chunks
    assert face.read(other.id, "ai-stream", access_token=every_run) == ["other"]

    with pytest.raises(ApiError) as refused:
        face.read(first.id, "ai-stream", access_token="not-a-token")
    assert refused.value.status == 401


def test_create_public_token_needs_runs_to_read() -> None:
    with pytest.raises(ValueError):
        auth.create_public_token(read_runs=[])
    with pytest.raises(ApiError) as refused:
        auth.create_public_token(read_runs=["run_abc"], expiration="forever")
    assert refused.value.status == 400


# -- chunk values ----------------------------------------------------------------------------


def test_large_chunks_round_trip_and_one_over_the_limit_is_refused(face: Face) -> None:
    """Chunks up to the server's per-chunk limit (1 MiB of JSON) are stored and read back whole,
    several to a stream; a larger one ends the write at once with StreamWriteError (413)."""
    big = ["x" * 900_000, "y" * 900_000, {"z": "z" * 300_000}]
    handle = face.trigger(never_claimed)
    try:
        if face.flavour == "async":
            arun(pipe_and_wait("big", big, target=handle.id))
        else:
            within(
                HANG_GUARD,
                lambda: sync_streams.pipe("big", big, target=handle.id).wait_until_complete(),
            )
        with pytest.raises(StreamWriteError, match=r"over the limit"):
            within(
                HANG_GUARD,
                lambda: sync_streams.append("too-big", "x" * (1024 * 1024 + 1), target=handle.id),
            )
    finally:
        face.cancel(handle.id)

    assert face.read(handle.id, "big") == big


def test_a_non_ascii_chunk_under_the_limit_as_json_text_is_stored() -> None:
    """The per-chunk limit is on the chunk's JSON text (docs/websocket-protocol.md, Limits): a
    chunk of 300,000 "é" (600,008 bytes of UTF-8 JSON) is stored and reads back the same."""
    chunk = {"z": "é" * 300_000}
    handle = never_claimed.trigger_sync()
    try:
        within(HANG_GUARD, lambda: sync_streams.append("accents", chunk, target=handle.id))
    finally:
        runstream.sync.runs.cancel(handle.id)

    assert arun(collect_read(handle.id, "accents")) == [chunk]


def test_append_of_a_value_that_is_not_json_raises_type_error_at_once() -> None:
    """A chunk that JSON cannot encode (an object, a set) is refused by ``append`` and by
    ``write`` with TypeError, before anything is sent."""
    handle = never_claimed.trigger_sync()
    try:
        with pytest.raises(TypeError):
            sync_streams.append("bad", object(), target=handle.id)

        async def scenario() -> None:
            with pytest.raises(TypeError):
                await streams.append("bad", {1, 2}, target=handle.id)

        arun(scenario())
    finally:
        runstream.sync.runs.cancel(handle.id)


def test_a_refused_append_leaves_no_writer_holding_the_stream_open() -> None:
    """After ``append`` refused a value that is not JSON, the stream still ends when its run
    ends: the refused call left no writer behind."""
    handle = never_claimed.trigger_sync()

    async def scenario() -> tuple[list[Any], Run]:
        with pytest.raises(TypeError):
            await streams.append("bad", object(), target=handle.id)
        await asyncio.sleep(0.3)  # let a writer the refused call may have started say hello
        await streams.append("bad", "ok", target=handle.id)
        await runs.cancel(handle.id)
        stream = await streams.read(handle.id, "bad", timeout_in_seconds=2)
        return await collect(stream), await runs.retrieve(handle.id)

    chunks, run = arun(scenario())

    assert chunks == ["ok"]
    assert streams_of(run) == {"bad": (1, True)}


def test_a_chunk_that_is_not_a_json_value_such_as_nan_is_refused_at_once() -> None:
    """NaN and Infinity are not JSON values: ``append`` refuses them at once (TypeError or
    ValueError), and a pipe that meets one still stores the chunks before it."""
    handle = never_claimed.trigger_sync()
    try:
        for value in (float("nan"), float("inf"), {"score": float("-inf")}):
            with pytest.raises((TypeError, ValueError)):
                within(
                    HANG_GUARD,
                    lambda value=value: sync_streams.append("nan", value, target=handle.id),
                )
        with pytest.raises((TypeError, ValueError)):
            within(
                HANG_GUARD,
                lambda: sync_streams.pipe(
                    "piped", ["a", float("nan"), "b"], target=handle.id
                ).wait_until_complete(),
            )
    finally:
        runstream.sync.runs.cancel(handle.id)
    assert arun(collect_read(handle.id, "piped")) == ["a"]


def test_a_string_chunk_with_a_lone_surrogate_is_stored_or_refused_never_retried_forever() -> None:
    """``"\\ud800"`` is a Python string that JSON can carry (as ``"\\ud800"``): ``append`` either
    stores it, so that it reads back the same, or refuses it at once; it never hangs."""
    handle = never_claimed.trigger_sync()

    async def scenario() -> list[Any] | None:
        try:
            await asyncio.wait_for(streams.append("lone", "\ud800", target=handle.id), 5)
        except (TypeError, ValueError, StreamWriteError):
            return None  # refused at once: acceptable
        return await collect_read(handle.id, "lone")

    try:
        stored = arun(scenario())
    finally:
        runstream.sync.runs.cancel(handle.id)
    assert stored in (None, ["\ud800"])


# -- the worker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own, so that no other worker serves its runs."""
    lone = start_server(tmp_path_factory.mktemp("lone-server"))
    yield lone
    lone.stop()


def test_a_worker_with_one_slot_runs_the_children_its_waiting_runs_wait_for(
    lone_server: ServerProcess, tmp_path: Path
) -> None:
    """``trigger_and_wait`` frees the waiting run's slot: on ``--concurrency 1`` a root run
    waiting for its child, which waits for the grandchild, still completes, in both flavours."""
    configure(api_url=lone_server.url, secret_key=SECRET_KEY)
    lone_worker = start_worker(lone_server, tmp_path, concurrency=1)
    try:
        for flavour in sdk_tasks.FLAVOURS:
            result = within(
                HANG_GUARD,
                lambda flavour=flavour: sdk_tasks.flavour_task(
                    "family-root", flavour
                ).trigger_and_wait_sync(),
            )
            assert result.ok, result.error
            assert result.output["child"]["output"]["grandchild"]["ok"]
    finally:
        code = lone_worker.stop()
    assert code == 0, lone_worker.log_path.read_text()


def test_a_worker_stopped_with_sigterm_finishes_its_running_run_first(
    lone_server: ServerProcess, tmp_path: Path
) -> None:
    """SIGTERM while a run executes: the worker lets the run (and its slow pipe) finish,
    completes it, and exits with 0. A run queued behind it is left QUEUED for another worker
    (or was finished, had it been claimed before the signal): never abandoned EXECUTING."""
    configure(api_url=lone_server.url, secret_key=SECRET_KEY)
    lone_worker = start_worker(lone_server, tmp_path, concurrency=1)
    try:
        running = sdk_tasks.slow_pipe_async.trigger_sync()
        deadline = time.monotonic() + HANG_GUARD
        while runstream.sync.runs.retrieve(running.id).status == "QUEUED":
            assert time.monotonic() < deadline, "the worker never claimed the run"
            time.sleep(0.02)
        behind = sdk_tasks.slow_pipe_sync.trigger_sync()
    finally:
        code = lone_worker.stop()

    assert code == 0, lone_worker.log_path.read_text()
    run = runstream.sync.runs.retrieve(running.id)
    assert run.status == "COMPLETED", run.error
    assert streams_of(run) == {"slow": (len(SLOW_CHUNKS), True)}
    assert runstream.sync.runs.retrieve(behind.id).status in ("QUEUED", "COMPLETED")
    runstream.sync.runs.cancel(behind.id)


def test_an_empty_access_token_is_no_credential_never_the_secret_key() -> None:
    """A page that hands on a missing token must not read with the server's own key."""
    from runstream._config import ClientSettings

    settings = ClientSettings("http://127.0.0.1:1", "rs_sk_the-key")

    assert settings.headers("") == {}
    assert settings.headers("a-token") == {"Authorization": "Bearer a-token"}
    assert settings.headers() == {"Authorization": "Bearer rs_sk_the-key"}
