"""The hubs that span processes, Redis pub/sub and PostgreSQL LISTEN/NOTIFY, through the same
tests: commits cross processes (here, two hubs in one test process, each with its own origin and
connections, as two server processes would have), and an outage of the service costs the
readers a read of the store, never a chunk. Each transport needs its service's test URL
(RUNSTREAM_TEST_REDIS_URL, RUNSTREAM_TEST_DATABASE_URL); the stores run on SQLite, and on
PostgreSQL too when RUNSTREAM_TEST_DATABASE_URL is set."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import POSTGRES_URL, Proxy, follow_all, free_port
from sqlalchemy import Engine

from runstream.server import create_app, runtime_of
from runstream.server.core.follower import Follower, store_reader
from runstream.server.core.hub import MAX_CARRIED_BYTES, Commit, InProcessHub
from runstream.server.core.postgres_hub import PostgresHub
from runstream.server.core.redis_hub import RedisHub
from runstream.server.core.spanning_hub import EVERY_STREAM, SpanningHub
from runstream.server.core.store import AppendRequest, CreateRequest, Store
from runstream.server.db import make_engine

REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL", "")
TEXT = "text/plain"
HUB_LOG = "runstream.server.core.spanning_hub"


@dataclass(frozen=True)
class Transport:
    """What the tests need to know of one service: how to reach it, name a hub's connections,
    and drop them from the service's side."""

    url: str
    hub_class: type[RedisHub] | type[PostgresHub]
    # ``url`` with a query parameter naming the connections made through it.
    name_parameter: str
    # An URL of the service where nothing listens, with a password that must not be logged.
    unreachable_url: str

    def named(self, url: str, name: str) -> str:
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}{self.name_parameter}={name}"

    def drop_connections(self, name: str) -> None:
        """Close, from the service's side, every connection ``named`` ``name``."""
        if self.hub_class is RedisHub:
            with redis.Redis.from_url(self.url) as admin:
                for client in admin.client_list():
                    if client["name"] == name:
                        admin.client_kill_filter(_id=client["id"])
        else:
            with psycopg.connect(self.libpq_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                )

    @property
    def libpq_url(self) -> str:
        return self.url.replace("postgresql+psycopg://", "postgresql://")

    @property
    def carried_bytes(self) -> int:
        """More message bytes than a commit may carry across processes (header aside)."""
        limit = self.hub_class.max_message_bytes
        return MAX_CARRIED_BYTES if limit is None else min(MAX_CARRIED_BYTES, limit)


TRANSPORTS = {
    "redis": Transport(
        REDIS_URL, RedisHub, "client_name", f"redis://:secret@127.0.0.1:{free_port()}/0"
    ),
    "postgres": Transport(
        POSTGRES_URL or "",
        PostgresHub,
        "application_name",
        f"postgresql://postgres:secret@127.0.0.1:{free_port()}/test",
    ),
}
NEEDS = {"redis": "RUNSTREAM_TEST_REDIS_URL", "postgres": "RUNSTREAM_TEST_DATABASE_URL"}

MakeHub = Callable[..., SpanningHub]


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> Transport:
    found = TRANSPORTS[request.param]
    if not found.url:
        pytest.skip(f"set {NEEDS[request.param]} to run the {request.param} hub's tests")
    return found


@pytest.fixture
def make_hub(transport: Transport) -> Iterator[MakeHub]:
    """Makes hubs on a channel of the test's own (a process each, in effect: each has its own
    origin and connections), closed after the test."""
    channel = f"runstream_test_{uuid.uuid4().hex}"
    hubs: list[SpanningHub] = []

    def make(url: str = transport.url, **options: float) -> SpanningHub:
        hub = transport.hub_class(url, channel=channel, **options)
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


def wait_listening(*hubs: SpanningHub) -> None:
    """Until every hub listens: what is published then reaches them all."""
    wait_for(lambda: all(hub.listening for hub in hubs))


def listen(hub: SpanningHub, path: str) -> queue.Queue[Commit]:
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
    # getMessage(), not .message: caplog holds a record before its handler formats it.
    return [m for r in caplog.records if r.name == HUB_LOG and " lost " in (m := r.getMessage())]


def test_a_commit_published_on_one_hub_reaches_the_listeners_of_another_intact(
    make_hub: MakeHub,
) -> None:
    a, b = make_hub(), make_hub()
    wait_listening(a, b)
    received = listen(b, "runs/r1/out")

    a.publish(Commit.appended("runs/r1/out", 3, [b"one", b"\x00\xff\n{}", b""], closed=True))
    commit = received.get(timeout=5)

    assert commit.path == "runs/r1/out"
    assert (commit.first_position, commit.next_position) == (3, 6)
    assert commit.messages == (b"one", b"\x00\xff\n{}", b"")
    assert commit.closed and not commit.gone and not commit.under


def test_a_commit_too_large_to_carry_arrives_by_position_only(
    make_hub: MakeHub, transport: Transport
) -> None:
    a, b = make_hub(), make_hub()
    wait_listening(a, b)
    received = listen(b, "big")
    quarter = transport.carried_bytes // 4

    a.publish(Commit.appended("big", 7, [b"x" * quarter, b"y" * quarter], closed=False))
    a.publish(Commit.appended("big", 10, [b"x" * transport.carried_bytes, b"y"], closed=False))
    carried, by_position = received.get(timeout=5), received.get(timeout=5)

    assert carried.messages == (b"x" * quarter, b"y" * quarter)
    assert by_position.messages is None
    assert (by_position.first_position, by_position.next_position) == (10, 12)
    assert not by_position.closed


def test_a_process_delivers_its_own_commits_at_once_and_only_once(make_hub: MakeHub) -> None:
    a, b = make_hub(), make_hub()
    wait_listening(a, b)
    own, elsewhere, marker = listen(a, "s"), listen(b, "s"), listen(a, "marker")

    a.publish(Commit.appended("s", 0, [b"m"], closed=False))
    assert own.qsize() == 1  # delivered before publish returned: no round trip through Redis
    elsewhere.get(timeout=5)  # the commit went through the service: its echo reached a too ...
    b.publish(Commit.changed("marker"))
    marker.get(timeout=5)  # ... before this, which b published after

    assert own.qsize() == 1


def test_followers_in_one_process_get_every_chunk_written_in_another_once_in_order(
    make_hub: MakeHub, engine: Engine
) -> None:
    # A resync timer too slow to matter: every chunk comes by the hub.
    a, b = make_hub(resync_interval=60), make_hub(resync_interval=60)
    wait_listening(a, b)
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


def test_a_dropped_subscription_is_logged_once_and_its_followers_catch_up_at_once(
    make_hub: MakeHub, transport: Transport, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    name = f"runstream-test-{uuid.uuid4().hex[:12]}"
    a = make_hub(resync_interval=60)
    b = make_hub(transport.named(transport.url, name), resync_interval=60)
    wait_listening(a, b)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    chunks = [f"chunk {n}".encode() for n in range(20)]

    with follower(reader, "s") as follow:
        follow.first()
        transport.drop_connections(name)
        for chunk in chunks:  # published while b is not subscribed: lost to it
            append(writer, "s", chunk)
        # Far sooner than the resync timer: b's reconnection has every follower read the store.
        seen = follow_all(follow, 20, timeout=3)

    assert seen == chunks
    wait_for(lambda: any(r.getMessage().endswith(" is back") for r in caplog.records))
    assert len(outage_lines(caplog)) == 1
    reader.engine.dispose()


def test_commits_a_process_could_not_publish_are_read_by_every_follower_once_it_can(
    make_hub: MakeHub, transport: Transport, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    proxy = Proxy(transport.url)
    a, b = make_hub(proxy.url, resync_interval=60), make_hub(resync_interval=60)
    wait_listening(a, b)
    writer, reader = Store(engine, a), Store(second_engine(engine), b)
    writer.create("s", CreateRequest(TEXT))
    chunks = [f"chunk {n}".encode() for n in range(10)]

    with follower(reader, "s") as follow:
        follow.first()
        append(writer, "s", *chunks[:5])
        seen = follow_all(follow, 5, timeout=5)  # a published everything it had, so far
        proxy.cut()  # only a loses the service: b still listens, and hears nothing of this
        append(writer, "s", *chunks[5:])  # its publication fails, and is not retried
        wait_for(lambda: len(outage_lines(caplog)) == 1)
        proxy.restore()
        # Far sooner than b's resync timer: a, publishing again, has every follower read.
        seen += follow_all(follow, 10, timeout=5)

    assert seen == chunks
    assert len(outage_lines(caplog)) == 1
    reader.engine.dispose()


class ScriptedHub(SpanningHub):
    """A hub over a service the test plays, up or down as it says, whose ``hold_send``-th send
    (counting from 1) waits for :attr:`release` once its outcome is decided: a publisher thread
    descheduled between what it saw and its telling of it, as on a loaded machine."""

    service = "Scripted"
    errors = (ConnectionError,)

    def __init__(self, hold_send: int) -> None:
        self.up = threading.Event()
        self.up.set()
        self.hold_send = hold_send
        self.held = threading.Event()
        self.release = threading.Event()
        self.sends = 0
        self.sent: list[bytes] = []
        super().__init__("scripted://service", resync_interval=60)

    def _send(self, message: bytes) -> None:
        self.sends += 1
        went_through = self.up.is_set()
        if self.sends == self.hold_send:
            self.held.set()
            self.release.wait(10)
        if not went_through:
            raise ConnectionError("refused")
        self.sent.append(message[len(self._origin) :])

    def _check(self) -> None:
        if not self.up.is_set():
            raise ConnectionError("refused")

    def _listen(self) -> None:
        if not self.up.is_set():
            raise ConnectionError("refused")
        self._listening_now()
        while not self._closing:
            if not self.up.is_set():
                raise ConnectionError("dropped")
            time.sleep(0.01)

    def _close_transport(self) -> None:
        pass


@pytest.fixture
def make_scripted_hub() -> Iterator[Callable[[int], ScriptedHub]]:
    hubs: list[ScriptedHub] = []

    def make(hold_send: int) -> ScriptedHub:
        hub = ScriptedHub(hold_send)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.release.set()
        hub.close()


def outage_and_recovery_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        "lost" if " lost " in r.getMessage() else "back"
        for r in caplog.records
        if r.name == HUB_LOG
    ]


def test_a_send_that_went_through_before_an_outage_and_is_told_after_it_logs_no_second_one(
    make_scripted_hub: Callable[[int], ScriptedHub], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    hub = make_scripted_hub(1)
    wait_listening(hub)
    hub.publish(Commit.changed("s"))  # goes through, and the publisher is held before it tells
    assert hub.held.wait(5)
    hub.up.clear()
    wait_for(lambda: len(outage_lines(caplog)) == 1)  # the listener's
    hub.publish(Commit.changed("s"))  # fails
    hub.release.set()  # the publisher tells of its first send, then fails the second
    wait_for(lambda: hub.sends >= 3)  # the second commit's two tries, then waiting
    hub.up.set()
    wait_for(lambda: hub.problem() is None and len(hub.sent) == 2 and hub.listening)

    assert hub.sent[1] == EVERY_STREAM.encode()  # the unsent commit: every follower reads
    assert outage_and_recovery_lines(caplog) == ["lost", "back"]


def test_a_send_that_failed_in_an_outage_and_is_told_after_it_logs_no_second_one(
    make_scripted_hub: Callable[[int], ScriptedHub], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    hub = make_scripted_hub(2)
    wait_listening(hub)
    hub.up.clear()
    wait_for(lambda: len(outage_lines(caplog)) == 1)  # the listener's
    hub.publish(Commit.changed("s"))  # fails, and so does its retry, held before it tells
    assert hub.held.wait(5)
    hub.up.set()
    wait_for(lambda: hub.problem() is None and hub.listening)  # the listener's reconnection
    hub.release.set()
    wait_for(lambda: len(hub.sent) == 1)

    assert hub.sent == [EVERY_STREAM.encode()]
    assert outage_and_recovery_lines(caplog) == ["lost", "back"]


def test_an_unreachable_service_fails_no_append_and_readers_progress_on_the_timer(
    make_hub: MakeHub, transport: Transport, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HUB_LOG)
    # a cannot reach the service at all (it started so); b can, but hears nothing from a.
    a = make_hub(transport.unreachable_url)
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
            create_app(
                {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789", "REDIS_URL": url}
            )


def test_the_app_picks_the_hub_its_settings_call_for(tmp_path: Path) -> None:
    """Redis when a Redis URL is set; else LISTEN/NOTIFY on PostgreSQL; else, on SQLite, the
    in-process hub: a deployment on PostgreSQL needs no third service to run several processes."""
    choices: list[tuple[dict[str, str], type[object]]] = [({}, InProcessHub)]
    if REDIS_URL:
        choices.append(({"REDIS_URL": REDIS_URL}, RedisHub))
    if POSTGRES_URL:
        choices.append(({"DATABASE_URL": POSTGRES_URL}, PostgresHub))
        if REDIS_URL:
            choices.append(({"DATABASE_URL": POSTGRES_URL, "REDIS_URL": REDIS_URL}, RedisHub))
    for settings, hub_class in choices:
        config = {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789", **settings}
        runtime = runtime_of(create_app(config))
        assert type(runtime.hub) is hub_class, settings
        runtime.close()
