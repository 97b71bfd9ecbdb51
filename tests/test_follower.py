"""The follower and the hub: the one live path from a commit to its readers, on SQLite and
PostgreSQL. A follower at the tail takes what the hub carries without reading the store; any
gap (a lost, reordered, oversized or overflowing commit) costs it one read, never a message."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import follow_all

from runstream.server.core.errors import Gone, NotFound
from runstream.server.core.follower import AsyncFollower, Batch, Follower, store_reader
from runstream.server.core.hub import MAX_CARRIED_BYTES, Commit, Hub, InProcessHub
from runstream.server.core.store import AppendRequest, CreateRequest, ProducerClaim, Store

TEXT = "text/plain"


def follower(store: Store, path: str, position: int | None = 0) -> Follower:
    return Follower(store.hub, path, position, store_reader(store, path, max_bytes=1 << 20))


def append(store: Store, path: str, *messages: bytes, close: bool = False) -> None:
    store.append(path, AppendRequest(list(messages), content_type=TEXT, close=close))


@pytest.fixture
def stream(store: Store) -> str:
    store.create("s", CreateRequest(TEXT))
    return "s"


def test_a_follower_at_the_tail_takes_each_commit_without_reading_the_store(
    store: Store, stream: str
) -> None:
    with follower(store, stream) as follow:
        follow.first()
        reads = store.read_count
        for n in range(50):
            append(store, stream, f"m{n}".encode())
        seen = follow_all(follow, 50)

    assert seen == [f"m{n}".encode() for n in range(50)]
    assert store.read_count == reads


def test_a_commit_between_the_first_read_and_the_wait_is_handed_on(
    store: Store, stream: str
) -> None:
    with follower(store, stream) as follow:
        assert follow.first().messages == []
        append(store, stream, b"landed before the wait")
        batch = follow.next(10)

    assert batch is not None and list(batch.messages) == [b"landed before the wait"]


def test_an_idle_follower_wakes_only_at_its_deadline_and_reads_nothing(
    store: Store, stream: str
) -> None:
    with follower(store, stream) as follow:
        follow.first()
        reads = store.read_count
        started = time.monotonic()
        assert follow.next(0.3) is None
        assert time.monotonic() - started >= 0.3
    assert store.read_count == reads


def test_a_commit_too_large_to_carry_is_read_from_the_store(store: Store, stream: str) -> None:
    large = b"x" * (MAX_CARRIED_BYTES + 1)
    with follower(store, stream) as follow:
        follow.first()
        reads = store.read_count
        append(store, stream, large)
        batch = follow.next(10)

    assert batch is not None and list(batch.messages) == [large]
    assert store.read_count == reads + 1


def test_reordered_and_repeated_commits_cost_a_read_never_a_message(
    store: Store, stream: str
) -> None:
    """Commits that arrive out of order (two writers publishing after their commits) or twice:
    each message is handed on once, in order."""
    with follower(store, stream) as follow:
        follow.first()
        quiet = InProcessHub()  # the store publishes nowhere: the test delivers by hand
        store.hub = quiet
        append(store, stream, b"a")
        append(store, stream, b"b")
        first, second = (
            Commit.appended(stream, 0, [b"a"], closed=False),
            Commit.appended(stream, 1, [b"b"], closed=False),
        )
        follow.hub.deliver(second)
        follow.hub.deliver(first)
        follow.hub.deliver(second)
        seen = follow_all(follow, 2)

    assert seen == [b"a", b"b"]


def test_a_follower_that_falls_far_behind_reads_the_store(store: Store, stream: str) -> None:
    with follower(store, stream) as follow:
        follow.first()
        for n in range(300):  # more commits than a follower keeps
            append(store, stream, f"{n}".encode())
        seen = follow_all(follow, 300)

    assert seen == [f"{n}".encode() for n in range(300)]


def test_a_reader_behind_catches_up_in_pages_then_follows(store: Store, stream: str) -> None:
    for _ in range(20):
        append(store, stream, b"y" * 100_000)

    read = store_reader(store, stream, max_bytes=250_000)
    with Follower(store.hub, stream, 0, read) as follow:
        first = follow.first()
        assert 0 < len(first.messages) < 20 and not first.up_to_date
        seen = list(first.messages) + follow_all(follow, 20)
        append(store, stream, b"live")
        live = follow.next(10)

    assert len(seen) == 20
    assert live is not None and list(live.messages) == [b"live"]


def test_closing_hands_on_the_end_once(store: Store, stream: str) -> None:
    with follower(store, stream) as follow:
        follow.first()
        append(store, stream, b"last", close=True)
        batch = follow.next(10)
        assert batch is not None and list(batch.messages) == [b"last"] and batch.reached_end
        assert follow.ended
        assert follow.next(0.05) is None


def test_a_close_without_data_ends_a_follower_at_the_tail(store: Store, stream: str) -> None:
    append(store, stream, b"a")
    with follower(store, stream, 1) as follow:
        follow.first()
        append(store, stream, close=True)
        batch = follow.next(10)

    assert batch is not None and batch.reached_end and list(batch.messages) == []


def test_a_deleted_stream_is_a_refusal_for_its_follower(store: Store, stream: str) -> None:
    with follower(store, stream) as follow:
        follow.first()
        store.delete(stream)
        with pytest.raises((NotFound, Gone)):
            follow.next(10)


def test_only_accepted_changes_are_published(store: Store, stream: str) -> None:
    """Changes to other streams, rejected appends and producer retries publish nothing."""
    store.create("other", CreateRequest(TEXT))
    published: list[Commit] = []
    store.hub.add_listener(stream, published.append)
    producer = ProducerClaim("p", 0, 0)

    append(store, "other", b"not for s")
    store.append(stream, AppendRequest([b"ok"], content_type=TEXT, producer=producer))
    store.append(stream, AppendRequest([b"ok"], content_type=TEXT, producer=producer))  # retry
    with pytest.raises(Exception, match="Content-Type"):
        store.append(stream, AppendRequest([b"x"], content_type="application/json"))

    assert [(c.first_position, c.messages) for c in published] == [(0, (b"ok",))]


def test_a_commit_crosses_processes_as_bytes_unchanged() -> None:
    for commit in (
        Commit.appended("runs/run_1/default", 7, [b'"a"', b"", b"\x00\n"], closed=True),
        Commit.appended("s", 0, [b"z" * (MAX_CARRIED_BYTES + 1)], closed=False),
        Commit.changed("gone", gone=True),
        Commit.changed_under("runs/run_1/"),
    ):
        again = Commit.decode(commit.encode())
        assert (
            again.path,
            again.first_position,
            again.next_position,
            again.messages,
            again.closed,
            again.gone,
            again.under,
        ) == (
            commit.path,
            commit.first_position,
            commit.next_position,
            commit.messages,
            commit.closed,
            commit.gone,
            commit.under,
        )


def test_a_hub_that_loses_commits_is_caught_up_by_its_resync_timer(
    store: Store, stream: str
) -> None:
    class LossyHub(InProcessHub):
        resync_interval = 0.2

        def publish(self, commit: Commit) -> None:
            pass  # every commit is lost

    lossy = LossyHub()
    store.hub = lossy
    with follower(store, stream) as follow:
        follow.first()
        append(store, stream, b"never announced")
        batch = follow.next(5)

    assert batch is not None and list(batch.messages) == [b"never announced"]


def test_a_follower_kept_busy_by_a_lossy_hub_never_reads_on_its_resync_timer(
    store: Store, stream: str
) -> None:
    """The resync timer is for silence: a commit that continues where the follower stands
    proves none before it was lost. (Were every busy reader to read the store each interval,
    a hundred readers would read at once, and their chunks wait behind the reads.)"""

    class LossyHub(InProcessHub):
        resync_interval = 0.1  # may lose commits, though this one loses none

    def write() -> None:
        for n in range(20):  # over 0.8 s: eight resync intervals
            time.sleep(0.04)
            append(store, stream, f"m{n}".encode())

    store.hub = LossyHub()
    writer = threading.Thread(target=write)
    with follower(store, stream) as follow:
        follow.first()
        reads = store.read_count
        writer.start()  # the follower waits for each of its commits
        seen = follow_all(follow, 20)
        writer.join()

    assert seen == [f"m{n}".encode() for n in range(20)]
    assert store.read_count == reads


def test_many_followers_share_one_batch_and_its_encoding(store: Store, stream: str) -> None:
    batches: list[Batch] = []
    ready = threading.Barrier(11)

    def run() -> None:
        with follower(store, stream) as follow:
            follow.first()
            ready.wait()
            batch = follow.next(10)
            assert batch is not None
            batches.append(batch)

    threads = [threading.Thread(target=run) for _ in range(10)]
    for thread in threads:
        thread.start()
    ready.wait()
    append(store, stream, b"shared")
    for thread in threads:
        thread.join(10)

    builds: list[int] = []
    encodings = {
        id(batch.encoded("frame", lambda: builds.append(1) or b"frame")) for batch in batches
    }
    assert len(batches) == 10
    assert len(builds) == 1 and len(encodings) == 1


@pytest.fixture
def hundred_followers(store: Store, stream: str) -> Iterator[list[list[bytes]]]:
    seen: list[list[bytes]] = [[] for _ in range(100)]
    ready = threading.Barrier(101)
    stop = threading.Event()

    def run(index: int) -> None:
        with follower(store, stream) as follow:
            follow.first()
            ready.wait()
            while not stop.is_set() and len(seen[index]) < 1000:
                batch = follow.next(1)
                if batch is not None:
                    seen[index].extend(batch.messages)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    ready.wait()
    yield seen
    stop.set()
    for thread in threads:
        thread.join(10)


def test_a_thousand_appends_to_a_hundred_followers_cost_no_read_each(
    store: Store, stream: str, hundred_followers: list[list[bytes]]
) -> None:
    reads = store.read_count
    for n in range(1000):
        append(store, stream, f"{n}".encode())
    deadline = time.monotonic() + 30
    while any(len(seen) < 1000 for seen in hundred_followers) and time.monotonic() < deadline:
        time.sleep(0.05)

    expected = [f"{n}".encode() for n in range(1000)]
    assert all(seen == expected for seen in hundred_followers)
    # A few followers may read once after a burst outran them; never one read per append each.
    assert store.read_count - reads <= 1000


def test_the_async_follower_is_the_same_path_in_an_event_loop(store: Store, stream: str) -> None:
    read = store_reader(store, stream, max_bytes=1 << 20)

    async def scenario() -> list[bytes]:
        seen: list[bytes] = []
        async with AsyncFollower(store.hub, stream, 0, read) as follow:
            first = await follow.next(0.05)
            assert first is None  # nothing stored yet: it waited and timed out
            await asyncio.to_thread(append, store, stream, b"a", b"b")
            await asyncio.to_thread(append, store, stream, b"c", close=True)
            while not follow.ended:
                batch = await follow.next(10)
                assert batch is not None
                seen.extend(batch.messages)
        return seen

    assert asyncio.run(scenario()) == [b"a", b"b", b"c"]


def test_followers_of_a_prefix_hear_a_change_under_it(hub: Hub) -> None:
    heard: list[str] = []
    hub.add_listener("runs/run_1/a", lambda commit: heard.append(commit.path))
    hub.add_listener("runs/run_1/b", lambda commit: heard.append(commit.path))
    hub.add_listener("runs/run_12/a", lambda commit: heard.append(commit.path))

    hub.publish(Commit.changed_under("runs/run_1/"))

    assert sorted(heard) == ["runs/run_1/a", "runs/run_1/b"]
