"""Websocket throughput: one SDK pipe writing a run stream, and one reader following it.

    python bench/pipe.py                  # starts `runstream serve` on a fresh SQLite file
    python bench/pipe.py --chunks 50000

Prints chunks per second for the pipe (from the first chunk to wait_until_complete, every chunk
durably stored) and for a live reader receiving the same chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from appends import local_server

from runstream import configure, streams

CHUNK = "token-" + "x" * 34  # a 40-character string: about one LLM token's worth of JSON


async def measure(url: str, count: int) -> tuple[float, float]:
    configure(api_url=url, secret_key=None)
    run_id = httpx.post(f"{url}/api/v1/tasks/bench/trigger", json={}).json()["id"]
    reader = await streams.read(run_id, "bench", timeout_in_seconds=30)

    async def follow() -> float:
        received = 0
        async for _ in reader:
            received += 1
            if received == count:
                return time.perf_counter()
        raise RuntimeError(f"the reader got {received} of {count} chunks")

    following = asyncio.create_task(follow())
    started = time.perf_counter()
    piped = streams.pipe("bench", [CHUNK] * count, target=run_id)
    await piped.wait_until_complete()
    stored = time.perf_counter()
    read = await following
    return count / (stored - started), count / (read - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20000)
    args = parser.parse_args()
    with local_server() as url:
        write_rate, read_rate = asyncio.run(measure(url, args.chunks))
    print(f"pipe: {write_rate:,.0f} chunks/s stored ({args.chunks} chunks of ~40 bytes)")
    print(f"reader: {read_rate:,.0f} chunks/s received live")


if __name__ == "__main__":
    main()
