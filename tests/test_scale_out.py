"""Two server processes sharing PostgreSQL and Redis: what is appended through one reaches the
live readers of the other at once, every chunk once and in order.

Needs RUNSTREAM_TEST_DATABASE_URL and RUNSTREAM_TEST_REDIS_URL (the shared database is reset).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import AUTH, POSTGRES_URL, ServerProcess, reset_postgres, start_server

from runstream.server.db.engine import make_engine

REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL", "")
pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL),
    reason="set RUNSTREAM_TEST_DATABASE_URL and RUNSTREAM_TEST_REDIS_URL to run this",
)
CHUNKS = 50
# Far longer than the test waits: a reader that hears of an append only when its long-poll
# times out, or when its follower re-reads the store on the hub's slow timer, comes too late.
LONG_POLL_TIMEOUT = 30
DELIVERED_WITHIN = 1.0  # the Redis hub's resync timer is 5 s


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    engine = make_engine(str(POSTGRES_URL))
    reset_postgres(engine)
    engine.dispose()
    env = {
        "RUNSTREAM_DATABASE_URL": str(POSTGRES_URL),
        "RUNSTREAM_REDIS_URL": REDIS_URL,
        "RUNSTREAM_LONG_POLL_TIMEOUT": str(LONG_POLL_TIMEOUT),
    }
    # One after the other: the first creates the schema.
    started = [start_server(tmp_path_factory.mktemp(name), env=env) for name in ("a", "b")]
    yield tuple(started)
    for server in started:
        server.stop()


def sse_messages(url: str, path: str, count: int, arrived: list[tuple[float, object]]) -> None:
    """Follow ``path`` over SSE until ``count`` messages came, noting when each arrived."""
    with httpx.stream(
        "GET", f"{url}{path}", params={"offset": "-1", "live": "sse"}, headers=AUTH, timeout=30
    ) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "data":
                for message in json.loads(line.removeprefix("data:")):
                    arrived.append((time.monotonic(), message))
                if len(arrived) >= count:
                    return


def long_poll_messages(
    url: str, path: str, count: int, arrived: list[tuple[float, object]]
) -> None:
    offset = "-1"
    with httpx.Client(base_url=url, headers=AUTH, timeout=LONG_POLL_TIMEOUT + 10) as client:
        while len(arrived) < count:
            response = client.get(path, params={"offset": offset, "live": "long-poll"})
            offset = response.headers["Stream-Next-Offset"]
            if response.status_code == 200:
                now = time.monotonic()
                arrived.extend((now, message) for message in response.json())


def test_appends_through_one_server_reach_the_live_readers_of_the_other_at_once(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """A writer appends one chunk every 20 ms through server A; an SSE reader and a long-poll
    reader of server B each get every chunk once, in order, each within a second of its
    append (the hub, not the store's slow re-read, brought it)."""
    a, b = servers
    path = f"/v1/stream/scale/{uuid.uuid4().hex}"
    with a.client() as client:
        assert client.put(path, headers={"Content-Type": "application/json"}).status_code == 201
    readers = {"sse": sse_messages, "long-poll": long_poll_messages}
    arrivals: dict[str, list[tuple[float, object]]] = {name: [] for name in readers}
    threads = [
        threading.Thread(target=read, args=(b.url, path, CHUNKS, arrivals[name]), daemon=True)
        for name, read in readers.items()
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both readers are waiting at the tail

    appended_at: list[float] = []
    with a.client() as client:
        for number in range(CHUNKS):
            appended_at.append(time.monotonic())
            answer = client.post(
                path, content=json.dumps([number]), headers={"Content-Type": "application/json"}
            )
            assert answer.status_code in (200, 204), answer.text
            time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=15)

    for name, arrived in arrivals.items():
        assert [message for _, message in arrived] == list(range(CHUNKS)), name
        slowest = max(when - appended_at[number] for number, (when, _) in enumerate(arrived))
        assert slowest < DELIVERED_WITHIN, f"{name}: a chunk took {slowest:.2f} s"


def test_readers_spread_over_four_workers_get_every_chunk_once_in_order(
    servers: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    """``runstream serve --workers 4`` on PostgreSQL and Redis: 16 SSE readers, which the
    kernel spreads over the four worker processes, and a writer whose appends each land in
    whichever worker takes its connection; every reader gets every chunk once, in order."""
    server = start_server(
        tmp_path,
        env={
            "RUNSTREAM_DATABASE_URL": str(POSTGRES_URL),
            "RUNSTREAM_REDIS_URL": REDIS_URL,
            "RUNSTREAM_LONG_POLL_TIMEOUT": str(LONG_POLL_TIMEOUT),
        },
        arguments=["--workers", "4"],
    )
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        deadline = time.monotonic() + 20  # gunicorn starts its workers one after the other
        while len(children.read_text().split()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children.read_text().split()) == 4
        path = f"/v1/stream/scale/{uuid.uuid4().hex}"
        with server.client() as client:
            created = client.put(path, headers={"Content-Type": "application/json"})
            assert created.status_code == 201
        arrivals: list[list[tuple[float, object]]] = [[] for _ in range(16)]
        threads = [
            threading.Thread(target=sse_messages, args=(server.url, path, CHUNKS, arrived))
            for arrived in arrivals
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        for number in range(CHUNKS):
            # A new connection for each append: the kernel hands each to any worker.
            answer = httpx.post(
                f"{server.url}{path}",
                content=json.dumps([number]),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert answer.status_code in (200, 204), answer.text
        for thread in threads:
            thread.join(timeout=20)
        for arrived in arrivals:
            assert [message for _, message in arrived] == list(range(CHUNKS))
    finally:
        server.stop()
