"""The Runstream Python SDK, for workers and apps (asyncio; the blocking face is runstream.sync).

from runstream import streams, task, runs, auth, configure

configure(api_url="http://127.0.0.1:8787", secret_key="...")

@task(id="summarize")
async def summarize(payload, ctx):
    piped = streams.pipe("ai-stream", tokens())
    await piped.wait_until_complete()
    return {"done": True}
"""

from __future__ import annotations

from . import auth, runs, streams
from ._config import configure
from ._context import RunInfo, TaskContext
from .errors import ApiError, RunstreamError, StreamWriteError, TaskError
from .reading import ReadStream
from .streams import StreamDefinition, StreamHandle, StreamWriter
from .tasks import Task, TaskRunResult, TriggeredRun, task
from .worker import Worker

__all__ = [
    "ApiError",
    "ReadStream",
    "RunInfo",
    "RunstreamError",
    "StreamDefinition",
    "StreamHandle",
    "StreamWriteError",
    "StreamWriter",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskRunResult",
    "TriggeredRun",
    "Worker",
    "auth",
    "configure",
    "runs",
    "streams",
    "task",
]
