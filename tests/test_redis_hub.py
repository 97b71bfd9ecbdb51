"""The Redis hub: commits cross processes (here, two hubs in one test process, each with its own
origin and connections, as two server processes would have), and an outage of Redis costs the
readers a read of the store, never a chunk. Needs RUNSTREAM_TEST_REDIS_URL; runs on SQLite, and
on PostgreSQL too when RUNSTREAM_TEST_DATABASE_URL is set."""

from __future__ import annotations

import logging
import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import Proxy, follow_all, free_port
from sqlalchemy import Engine

from runstream.server import create_app, runtime_of
from runstream.server.core.follower import Follower, store_reader
from runstream.server.core.hub import MAX_CARRIED_BYTES, Commit
from runstream.server.core.redis_hub import RedisHub
from runstream.server.core.store import AppendRequest, CreateRequest, Store
from runstream.server.db import make_engine

REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL", "")
needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="set RUNSTREAM_TEST_REDIS_URL (redis://127.0.0.1:6379/0) to run this"
)
TEXT = "text/plain"
HUB_LOG = "runstream.server.core.redis_hub"

MakeHub = Callable[..., RedisHub]


@pytest.fixture
def channel() -> Iterator[str]:
    """A channel of the test's own, so that tests sharing a Redis never hear each other."""
    yield f"runstream-test:{uuid.uuid4().hex}"


@pytest.fixture
def make_hub(channel: str) -> Iterator[MakeHub]:
    """Makes hubs on the test's channel (a process each, in effect), closed after the test."""
    hubs: list[RedisHub] = []

    def make(url: str = REDIS_URL, **options: float) -> RedisHub:
        hub = RedisHub(url, channel=channel, **options)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true after {seconds} s"
        time.sleep(0.01)


def wait_subscribed(channel: str, count: int) -> None:
    """Until ``count`` hubs listen on ``channel``: what is published then reaches them all."""
    with redis.Redis.from_url(REDIS_URL) as client:
        wait_for(lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()) == count)


def listen(hub: RedisHub, path: str) -> queue.Queue[Commit]:
    received: queue.Queue[Commit] = queue.Queue()
    hub.add_listener(path, received.put)
    return received


def second_engine(engine: Engine) -> Engine:
    """Another engine on the same database: the other process's."""
    return make_engine(engine.url.render_as_string(hide_password=False))


def follower(store: Store, path: str) -> Follower:
    return Follower(store.hub, path, 0, store_reader(store, path, max_bytes=1 << 20))


def append(store: Store, path: str, *messages: bytes) -> None:
    store.append(path, AppendRequest(list(messages), content_type=TEXT))


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HUB_LOG and " lost " in r.message]


@needs_redis
def test_a_commit_published_on_one_hub_reaches_the_listeners_of_another_intact(
    make_hub: MakeHub, channel: str
) -> None:
    a, b = make_hub(), make_hub()
    wait_subscribed(channel, 2)
    received = listen(b, "runs/r1/out")

    a.publish(Commit.appended("runs/r1/out", 3, [b"one", b"\x00\xff\n{}", b""], closed=True))
    commit = received.get(timeout=5)

    assert commit.path == "runs/r1/out"
    assert (commit.first_position, commit.next_position) == (3, 6)
    assert commit.messages == (b"one", b"\x00\xff\n{}", b"")
    assert commit.closed and not commit.gone and not commit.under


@needs_redis
def test_a_large_commit_arrives_by_position_only(make_hub: MakeHub, channel: str) -> None:
    a, b = make_hub(), make_hub()
    wait_subscribed(channel, 2)
    received = listen(b, "big")

    a.publish(Commit.appended("big", 10, [b"x" * MAX_CARRIED_BYTES, b"y"], closed=False))
    commit = received.get(timeout=5)

    assert commit.messages is None
    assert (commit.first_position, commit.next_position, commit.closed) == (10, 12, False)


@needs_redis
def test_a_process_delivers_its_own_commits_at_once_and_only_once(
    make_hub: MakeHub, channel: str
) -> None:
    a, b = make_hub(), make_hub()
    wait_subscribed(channel, 2)
    own, elsewhere, marker = listen(a, "s"), listen(b, "s"), listen(a, "marker")

    a.publish(Commit.appended("s", 0, [b"m"], closed=False))
    assert own.qsize() == 1  # delivered before publish returned: no round trip through Redis
    elsewhere.get(timeout=5)  # the commit went through Redis, so its echo reached a too ...
    b.publish(Commit.changed("marker"))
    marker.get(timeout=5)  # ... before this, which b published after

    assert own.qsize() == 1


@needs_redis
def test_followers_in_one_process_get_every_chunk_written_in_another_once_in_order(
    make_hub: MakeHub, channel: str, engine: Engine
) -> None:
    # A resync timer too slow to matter: every chunk comes by the hub.
    a, b = make_hub(resync_interval=60), make_hub(resync_interval=60)
    wait_subscribed(channel, 2)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    chunks = [f"chunk {n}".encode() for n in range(300)]

    with follower(reader, "s") as follow:
        follow.first()
        for n in range(0, 300, 3):
            append(writer, "s", *chunks[n : n + 3])
        seen = follow_all(follow, 300, timeout=10)

    assert seen == chunks
    reader.engine.dispose()


@needs_redis
def test_a_dropped_subscription_is_logged_once_and_its_followers_catch_up_at_once(
    make_hub: MakeHub, channel: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    name = f"runstream-test-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in REDIS_URL else "?"
    a = make_hub(resync_interval=60)
    b = make_hub(f"{REDIS_URL}{separator}client_name={name}", resync_interval=60)
    wait_subscribed(channel, 2)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    chunks = [f"chunk {n}".encode() for n in range(20)]

    with follower(reader, "s") as follow, redis.Redis.from_url(REDIS_URL) as admin:
        follow.first()
        for client in admin.client_list():
            if client["name"] == name:
                admin.client_kill_filter(_id=client["id"])
        for chunk in chunks:  # published while b is not subscribed: lost to it
            append(writer, "s", chunk)
        # Far sooner than the resync timer: b's reconnection has every follower read the store.
        seen = follow_all(follow, 20, timeout=3)

    assert seen == chunks
    wait_for(lambda: any(r.getMessage().endswith(" is back") for r in caplog.records))
    assert len(outage_lines(caplog)) == 1
    reader.engine.dispose()


@needs_redis
def test_commits_a_process_could_not_publish_are_read_by_every_follower_once_it_can(
    make_hub: MakeHub, channel: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    proxy = Proxy(REDIS_URL)
    a, b = make_hub(proxy.url, resync_interval=60), make_hub(resync_interval=60)
    wait_subscribed(channel, 2)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    chunks = [f"chunk {n}".encode() for n in range(10)]

    with follower(reader, "s") as follow:
        follow.first()
        append(writer, "s", *chunks[:5])
        seen = follow_all(follow, 5, timeout=5)  # a published everything it had, so far
        proxy.cut()  # only a loses Redis: b stays subscribed, and hears nothing of this
        append(writer, "s", *chunks[5:])  # its publication fails, and is not retried
        wait_for(lambda: len(outage_lines(caplog)) == 1)
        proxy.restore()
        # Far sooner than b's resync timer: a, publishing again, has every follower read.
        seen += follow_all(follow, 10, timeout=5)

    assert seen == chunks
    assert len(outage_lines(caplog)) == 1
    reader.engine.dispose()


@needs_redis
def test_an_unreachable_redis_fails_no_append_and_readers_progress_on_the_timer(
    make_hub: MakeHub, channel: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    # a cannot reach Redis at all (it started so); b can, but hears nothing from a.
    a = make_hub(f"redis://:secret@127.0.0.1:{free_port()}/0")
    b = make_hub(resync_interval=0.3)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    own = listen(a, "s")
    chunks = [f"chunk {n}".encode() for n in range(30)]

    with follower(reader, "s") as follow:
        follow.first()
        for chunk in chunks:
            append(writer, "s", chunk)  # raises nothing: the chunk is stored
            time.sleep(0.02)
        seen = follow_all(follow, 30, timeout=5)

    assert seen == chunks
    assert own.qsize() == 30  # a's own readers hear of a's commits regardless
    (line,) = outage_lines(caplog)  # many failed publishes and reconnections: one line
    assert "secret" not in line
    reader.engine.dispose()


def test_a_malformed_redis_url_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    for url in ["http://127.0.0.1:6379", "redis://127.0.0.1:port/0"]:
        with pytest.raises(ValueError, match="RUNSTREAM_REDIS_URL"):
            create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "x", "REDIS_URL": url})


@needs_redis
def test_the_app_uses_the_redis_hub_when_a_redis_url_is_set(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "x", "REDIS_URL": REDIS_URL})
    runtime = runtime_of(app)
    assert isinstance(runtime.hub, RedisHub)
    runtime.close()
