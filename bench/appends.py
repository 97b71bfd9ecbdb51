"""Append throughput and reader wake-up latency of a Runstream server.

    python bench/appends.py                       # starts `runstream serve` on a fresh SQLite file
    python bench/appends.py --url http://127.0.0.1:8787 --count 5000

Figures printed:
- appends/s: one producer POSTing 100-byte JSON messages one at a time, each with idempotent
  producer headers, over one keep-alive connection, waiting for each 2xx before the next.
- wake-up latency over HTTP: a reader long-polls at the tail; the time from the writer sending an
  append to the reader holding the long-poll response. This includes the append's own request,
  so it is an upper bound of commit-to-return.
- wake-up latency in process: the store, hub and follower alone, from the moment the append's
  commit returned to the moment a follower waiting at the tail holds the new message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from peers import runstream_server
from procstat import percentile

from runstream.server.core.follower import Follower, store_reader
from runstream.server.core.hub import InProcessHub
from runstream.server.core.store import AppendRequest, CreateRequest, Store
from runstream.server.db import make_engine
from runstream.server.db.migrations import upgrade

# A 100-byte JSON message, like a chunk of an LLM's output.
MESSAGE = json.dumps({"token": "x" * 87}).encode()
assert len(MESSAGE) == 100


def client_of(url: str) -> httpx.Client:
    """A client of the server; RUNSTREAM_SECRET_KEY authenticates it against one with auth."""
    secret = os.environ.get("RUNSTREAM_SECRET_KEY")
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=url, headers=headers)


def bench_appends(url: str, count: int) -> float:
    path = f"/v1/stream/bench/appends-{time.time_ns()}"
    with client_of(url) as client:
        client.put(path, headers={"Content-Type": "application/json"}).raise_for_status()
        started = time.perf_counter()
        for seq in range(count):
            response = client.post(
                path,
                content=MESSAGE,
                headers={
                    "Content-Type": "application/json",
                    "Producer-Id": "bench",
                    "Producer-Epoch": "0",
                    "Producer-Seq": str(seq),
                },
            )
            response.raise_for_status()
        elapsed = time.perf_counter() - started
        tail = client.head(path).headers["Stream-Next-Offset"]
    assert tail.startswith(f"{count:016d}"), f"expected {count} messages, tail is {tail}"
    return count / elapsed


def bench_http_wakeup(url: str, samples: int) -> list[float]:
    path = f"/v1/stream/bench/wakeup-{time.time_ns()}"
    latencies: list[float] = []
    with client_of(url) as writer, client_of(url) as reader:
        offset = writer.put(path, headers={"Content-Type": "application/json"}).headers[
            "Stream-Next-Offset"
        ]
        for _ in range(samples):
            received: dict[str, Any] = {}
            thread = threading.Thread(target=long_poll, args=(reader, path, offset, received))
            thread.start()
            time.sleep(0.02)  # let the long-poll reach the server and wait at the tail
            sent = time.perf_counter()
            writer.post(path, content=MESSAGE, headers={"Content-Type": "application/json"})
            thread.join()
            latencies.append(received["at"] - sent)
            offset = received["offset"]
    return latencies


def long_poll(client: httpx.Client, path: str, offset: str, received: dict[str, Any]) -> None:
    response = client.get(path, params={"offset": offset, "live": "long-poll"})
    received["at"] = time.perf_counter()
    received["offset"] = response.headers["Stream-Next-Offset"]


def bench_inprocess_wakeup(samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/bench.sqlite3")
        upgrade(engine)
        hub = InProcessHub()
        store = Store(engine, hub)
        store.create("wakeup", CreateRequest(content_type="application/json"))
        latencies: list[float] = []
        for position in range(samples):
            woke: dict[str, float] = {}
            ready = threading.Event()
            thread = threading.Thread(
                target=wait_for_data, args=(store, "wakeup", position, ready, woke)
            )
            thread.start()
            ready.wait()
            time.sleep(0.005)
            store.append("wakeup", AppendRequest(messages=[MESSAGE]))
            committed = time.perf_counter()
            thread.join()
            latencies.append(max(0.0, woke["at"] - committed))
        engine.dispose()
        return latencies


def wait_for_data(
    store: Store, path: str, position: int, ready: threading.Event, woke: dict[str, float]
) -> None:
    """Follow the stream at ``position`` until its next message arrives; note when."""

    read = store_reader(store, path, max_bytes=1 << 20)
    with Follower(store.hub, path, position, read) as follower:
        follower.first()
        ready.set()
        while follower.next(5) is None:
            pass
        woke["at"] = time.perf_counter()


def report(name: str, latencies: list[float]) -> None:
    ms = [latency * 1000 for latency in latencies]
    print(
        f"{name}: median {statistics.median(ms):.2f} ms, p99 {percentile(sorted(ms), 0.99):.2f} ms "
        f"({len(ms)} samples)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start one on a fresh SQLite file")
    parser.add_argument("--count", type=int, default=3000, help="appends to time")
    parser.add_argument("--samples", type=int, default=200, help="wake-up samples")
    args = parser.parse_args()

    with ExitStack() as stack:
        url = args.url
        if url is None:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(runstream_server(logs)).url
        rate = bench_appends(url, args.count)
        print(f"appends: {rate:,.0f} appends/s (one producer, 100-byte JSON, {args.count} appends)")
        report(
            "wake-up over HTTP (append sent -> long-poll returned)",
            bench_http_wakeup(url, args.samples),
        )
    report("wake-up in process (commit -> reader has data)", bench_inprocess_wakeup(args.samples))


if __name__ == "__main__":
    main()
