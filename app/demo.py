"""The demo of ``runstream serve --demo``: a worker inside the server process, and a task that
streams a text token by token, as a language model would, into two streams of its run.

It uses the SDK exactly as an application would, over the server's own HTTP and websocket API.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from runstream import TaskContext, Worker, configure, streams, task

log = logging.getLogger(__name__)

TEXT = """\
# Durable streams

A background job — an LLM call, a data pipeline, an agent — produces its output **bit by bit**.
Runstream stores every chunk the moment it is written and streams it to anyone watching, live.

- A reader that loses its connection *resumes exactly* where it stopped.
- A writer that retries **never stores a chunk twice**.
- A stream has an explicit end, so a reader knows when it has everything.

Reload this page while the text is still arriving: nothing is lost, nothing repeats.
"""

answer = streams.define(id="answer", type=str)
progress = streams.define(id="progress", type=dict)


def tokens(text: str) -> list[str]:
    """The text cut the way a model emits it: words with their leading space, and newlines."""
    return re.findall(r"\s*\S+|\n", text)


@task(id="demo-llm")
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


def start(api_url: str, secret_key: str) -> threading.Thread:
    """Run the demo worker in a daemon thread and trigger one demo run once the server answers."""

    def run() -> None:
        configure(api_url=api_url, secret_key=secret_key)
        _wait_for_server(api_url)
        handle = asyncio.run(_trigger())
        print(f"  demo: watch {api_url}/runs/{handle} stream live", flush=True)
        asyncio.run(Worker({"demo-llm": demo_llm}, concurrency=2).run(asyncio.Event()))

    thread = threading.Thread(target=run, name="runstream-demo-worker", daemon=True)
    thread.start()
    return thread


async def _trigger() -> str:
    return (await demo_llm.trigger({"delay": 0.15})).id


def _wait_for_server(api_url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(api_url + "/runs", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
