"""The demo of ``runstream serve --demo``: a worker inside the server process, and a task that
streams a text token by token, as a language model would, into two streams of its run.

It uses the SDK exactly as an application would, over the server's own HTTP and websocket API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from runstream import TaskContext, Worker, configure, streams, task
from runstream.event_loop import process_loop

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

TEXT = """\
# Durable streams

A background job — an LLM call, a data pipeline, an agent — produces its output **bit by bit**.
Runstream stores every chunk the moment it is written and streams it to anyone watching, live.
This run is one such job: a task that writes this text a word at a time, as a model would, for
about a minute, so that there is time to look around while it runs.

## What to try while it streams

- **Reload this page.** The text comes back up to the last word written, and carries on from
  there: nothing is lost, nothing repeats.
- **Open the run in a second tab.** Both tabs follow the same stream; each reader keeps its own
  place in it.
- **Switch to the progress tab.** A run may have several streams: this one also reports how far
  it has come, every ten words, as JSON.
- **Go back to the runs list.** The run shows as executing, with its duration ticking, until
  the task returns; then it completes, with its output.

## What makes it durable

- A reader that loses its connection *resumes exactly* where it stopped, from the offset it
  last saw.
- A writer that retries **never stores a chunk twice**: every chunk has its sequence number.
- A stream has an explicit end, so a reader knows when it has everything.
- The server keeps every stream in its database, SQLite or PostgreSQL, so a restart loses
  nothing that it acknowledged.

## Next

Declare your own task with `@task`, run it with `runstream worker --tasks yourmodule`, and
trigger it from your application. To watch this again, press "Run the demo again" on the
runs list.
"""

# The demo run streams its text for about this long: long enough to sign in and watch it.
DEMO_SECONDS = 60.0
TASK_ID = "demo-llm"

answer = streams.define(id="answer", type=str)
progress = streams.define(id="progress", type=dict)


def tokens(text: str) -> list[str]:
    """The text cut the way a model emits it: words with their leading space, and newlines."""
    return re.findall(r"\s*\S+|\n", text)


def payload() -> dict[str, Any]:
    """The payload of a demo run: a pause between tokens that makes the run last DEMO_SECONDS.
    (Each pause is random, from half to one and a half times this, as a model's would be.)"""
    return {"delay": round(DEMO_SECONDS / len(tokens(TEXT)), 3)}


@task(id=TASK_ID)
async def demo_llm(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    pieces = tokens(TEXT)
    delay = float(payload.get("delay", 0.06))

    async def emit() -> AsyncIterator[str]:
        for index, piece in enumerate(pieces):
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            if index % 10 == 0:
                await progress.append({"tokens": index, "of": len(pieces)})
            yield piece

    piped = answer.pipe(emit())
    await piped.wait_until_complete()
    await progress.append({"tokens": len(pieces), "of": len(pieces), "done": True})
    return {"tokens": len(pieces), "characters": len(TEXT)}


def start(api_url: str, secret_key: str) -> concurrent.futures.Future[None]:
    """Run the demo worker on the process's event loop, and trigger one demo run once the
    server answers. The loop is the one the server's views run on: under gevent a process runs
    only one asyncio loop, so the demo may not start a loop of its own."""
    configure(api_url=api_url, secret_key=secret_key)
    demo = asyncio.run_coroutine_threadsafe(_serve_demo(api_url), process_loop())
    demo.add_done_callback(_report_failure)
    return demo


async def _serve_demo(api_url: str) -> None:
    await _wait_for_server(api_url)
    run_id = await _trigger()
    print(f"  demo: watch {api_url}/runs/{run_id} stream live", flush=True)
    await Worker({TASK_ID: demo_llm}, concurrency=2).run(asyncio.Event())


def _report_failure(demo: concurrent.futures.Future[None]) -> None:
    if not demo.cancelled() and demo.exception() is not None:
        log.error("the demo worker stopped", exc_info=demo.exception())


def trigger_again(app_runtime: Runtime) -> str:
    """Trigger another demo run in-process (the dashboard's "Run the demo again"); its id.

    It blocks on the database: call it from a thread. The demo worker of ``--demo`` runs it."""
    return app_runtime.runs.trigger(TASK_ID, payload()).id


async def _trigger() -> str:
    return (await demo_llm.trigger(payload())).id


async def _wait_for_server(api_url: str) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        for _ in range(200):
            try:
                await client.get(api_url + "/runs")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
