"""Websocket throughput: one SDK pipe writing a run stream, and one reader following it.

    python bench/pipe.py                  # starts `runstream serve` on a fresh SQLite file
    python bench/pipe.py --chunks 50000

Prints chunks per second for the pipe (from the first chunk to wait_until_complete, every chunk
durably stored) and for a live reader receiving the same chunks. ``python -m bench --only
ws_pipe`` measures the same pipe, without the reader, beside Redis (bench/capacity.py).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from peers import runstream_server

from runstream import configure, streams
from runstream.reading import ReadStream

CHUNK = "token-" + "x" * 34  # a 40-character string: about one LLM token's worth of JSON


async def measure(
    url: str, count: int, chunk: Any = CHUNK, *, follow: bool = True
) -> tuple[float, float | None]:
    """Chunks per second of one SDK pipe of ``count`` copies of ``chunk`` to a new run's stream,
    from the first chunk until the server has acknowledged every one; and, if ``follow``, of a
    live reader of that stream, there before the pipe starts, until it holds them all."""
    configure(api_url=url, secret_key=None)
    run_id = httpx.post(f"{url}/api/v1/tasks/bench/trigger", json={}).json()["id"]
    following = None
    if follow:
        reader = await streams.read(run_id, "bench", timeout_in_seconds=30)
        following = asyncio.create_task(read_all(reader, count))
    started = time.perf_counter()
    piped = streams.pipe("bench", [chunk] * count, target=run_id)
    await piped.wait_until_complete()
    stored = time.perf_counter()
    read = None if following is None else count / (await following - started)
    return count / (stored - started), read


async def read_all(reader: ReadStream[Any], count: int) -> float:
    """When the reader has received ``count`` chunks."""
    received = 0
    async for _ in reader:
        received += 1
        if received == count:
            return time.perf_counter()
    raise RuntimeError(f"the reader got {received} of {count} chunks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs, runstream_server(Path(logs)) as server:
        write_rate, read_rate = asyncio.run(measure(server.url, args.chunks))
    print(f"pipe: {write_rate:,.0f} chunks/s stored ({args.chunks} chunks of ~40 bytes)")
    print(f"reader: {read_rate:,.0f} chunks/s received live")


if __name__ == "__main__":
    main()
