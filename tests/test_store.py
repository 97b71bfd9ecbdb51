"""Store-level tests: what is stored, at which positions, and what each request is told.

Every test runs on SQLite and, when RUNSTREAM_TEST_DATABASE_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from runstream.server.core import offsets
from runstream.server.core.errors import (
    Conflict,
    Gone,
    Invalid,
    NotFound,
    ProducerFenced,
    RunstreamError,
    SequenceGap,
    StreamClosed,
    TooLarge,
)
from runstream.server.core.hub import InProcessHub
from runstream.server.core.store import (
    AppendRequest,
    AppendResult,
    CreateRequest,
    ForkRequest,
    ProducerClaim,
    Store,
    utcnow,
)

TEXT = "text/plain"
JSON = "application/json"
BINARY = "application/octet-stream"
EVERYTHING = 1 << 30  # a max_bytes that reads a whole stream in one page


def contents(store: Store, path: str, position: int | None = 0) -> list[bytes]:
    """Every message of the stream from ``position`` on."""
    return store.read(path, position, max_bytes=EVERYTHING).messages


@dataclass(frozen=True)
class Snapshot:
    messages: list[bytes]
    next_position: int
    total_bytes: int
    closed: bool


def snapshot(store: Store, path: str) -> Snapshot:
    """What a client can observe of a stream, to compare before and after a request."""
    info = store.head(path)
    return Snapshot(contents(store, path), info.next_position, info.total_bytes, info.closed)


def append(
    store: Store,
    path: str,
    *messages: bytes,
    producer: ProducerClaim | None = None,
    stream_seq: str | None = None,
    close: bool = False,
    content_type: str | None = None,
) -> AppendResult:
    return store.append(
        path,
        AppendRequest(
            messages=list(messages),
            content_type=content_type,
            producer=producer,
            stream_seq=stream_seq,
            close=close,
        ),
    )


def claim(producer_id: str, epoch: int, seq: int) -> ProducerClaim:
    return ProducerClaim(producer_id=producer_id, epoch=epoch, seq=seq)


def on_postgres(store: Store) -> bool:
    return store.engine.dialect.name == "postgresql"


# -- create ----------------------------------------------------------------------------------


def test_create_makes_an_empty_open_stream(store: Store) -> None:
    """A new stream is empty, open, at offset zero, with the content type it was given."""
    result = store.create("s", CreateRequest(TEXT))

    assert result.created is True
    info = store.head("s")
    assert (info.content_type, info.next_position, info.closed) == (TEXT, 0, False)
    assert info.next_offset == "0000000000000000_0000000000000000"
    assert contents(store, "s") == []


def test_create_stores_initial_messages_in_order(store: Store) -> None:
    """Messages given at creation are the stream's first messages, positions 0..n-1."""
    result = store.create("s", CreateRequest(TEXT, messages=[b"one", b"two", b"three"]))

    assert result.stream.next_position == 3
    assert result.stream.total_bytes == len(b"onetwothree")
    assert contents(store, "s") == [b"one", b"two", b"three"]
    assert contents(store, "s", 2) == [b"three"]


def test_create_again_with_the_same_config_is_idempotent(store: Store) -> None:
    """Repeating a create reports created=False and stores nothing more (even a new body)."""
    store.create("s", CreateRequest(TEXT, messages=[b"first"], ttl_seconds=3600))
    store.append("s", AppendRequest([b"second"]))

    again = store.create("s", CreateRequest(TEXT, messages=[b"ignored"], ttl_seconds=3600))
    # Media types compare case-insensitively and without parameters.
    again_other_spelling = store.create(
        "s", CreateRequest("TEXT/Plain; charset=utf-8", ttl_seconds=3600)
    )

    assert again.created is False
    assert again_other_spelling.created is False
    assert again.stream.next_position == 2
    assert contents(store, "s") == [b"first", b"second"]


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(CreateRequest(JSON, ttl_seconds=3600), id="content-type"),
        pytest.param(CreateRequest(TEXT, ttl_seconds=60), id="ttl"),
        pytest.param(CreateRequest(TEXT), id="no-ttl"),
        pytest.param(CreateRequest(TEXT, ttl_seconds=3600, closed=True), id="closed"),
        pytest.param(CreateRequest(TEXT, expires_at=utcnow() + timedelta(hours=2)), id="expires"),
    ],
)
def test_create_again_with_a_different_config_conflicts(
    store: Store, request_: CreateRequest
) -> None:
    """A create that differs in content type, TTL, expiry or closed state is a Conflict."""
    store.create("s", CreateRequest(TEXT, messages=[b"data"], ttl_seconds=3600))
    before = snapshot(store, "s")

    with pytest.raises(Conflict) as error:
        store.create("s", request_)

    assert "different configuration" in error.value.message
    assert snapshot(store, "s") == before


def test_create_closed_conflicts_with_open_and_vice_versa(store: Store) -> None:
    """Closure status is part of the configuration a repeated create must match."""
    store.create("closed", CreateRequest(TEXT, messages=[b"final"], closed=True))
    store.create("open", CreateRequest(TEXT))

    assert store.create("closed", CreateRequest(TEXT, closed=True)).created is False
    with pytest.raises(Conflict):
        store.create("closed", CreateRequest(TEXT))
    with pytest.raises(Conflict):
        store.create("open", CreateRequest(TEXT, closed=True))
    assert store.head("open").closed is False


def test_create_over_an_expired_stream_starts_fresh(store: Store) -> None:
    """An expired stream counts as absent: creating its path again gives a new, empty stream."""
    store.create(
        "s", CreateRequest(TEXT, messages=[b"old"], expires_at=utcnow() - timedelta(seconds=5))
    )

    result = store.create("s", CreateRequest(JSON))

    assert result.created is True
    assert store.head("s").content_type == JSON
    assert contents(store, "s") == []


def test_concurrent_creates_of_one_path_create_it_once(store: Store) -> None:
    """Racing creates of one path: exactly one reports created, and none fails."""
    barrier = threading.Barrier(8)

    def create() -> bool:
        barrier.wait()
        return store.create("s", CreateRequest(TEXT)).created

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: create(), range(8)))

    assert sorted(results) == [False] * 7 + [True]


# -- append and read -------------------------------------------------------------------------


def test_append_then_read_back(store: Store) -> None:
    """Appended messages read back byte for byte, in order, and each append moves the tail."""
    store.create("s", CreateRequest(BINARY))
    payloads = [bytes(range(256)), b"\x00", b"\xff\xfe\r\n", b"x" * 10_000]

    tails = [append(store, "s", payload).stream.next_position for payload in payloads]

    assert tails == [1, 2, 3, 4]
    assert contents(store, "s") == payloads
    info = store.head("s")
    assert info.total_bytes == sum(len(payload) for payload in payloads)
    assert info.next_offset == offsets.encode(4)


def test_one_append_may_carry_several_messages(store: Store) -> None:
    """A batch append stores each message at its own position."""
    store.create("s", CreateRequest(JSON))

    result = append(store, "s", b"1", b"2", b"3")

    assert result.stream.next_position == 3
    assert contents(store, "s", 1) == [b"2", b"3"]


def test_offsets_sort_lexicographically_in_stream_order() -> None:
    """Encoded offsets sort as strings in the same order as their positions, and round-trip."""
    positions = [0, 1, 2, 9, 10, 11, 99, 100, 1_000, 123_456_789, 10**15, 10**16 - 1]

    encoded = [offsets.encode(position) for position in positions]

    assert sorted(encoded) == encoded
    assert sorted(reversed(encoded)) == encoded
    assert [offsets.decode(offset) for offset in encoded] == positions
    assert offsets.encode(10) > offsets.encode(9)  # not "10" < "9"


@pytest.mark.parametrize(
    "offset",
    [
        "",
        "abc",
        "1",
        "-2",
        " -1",
        "0_0",
        "0000000000000001_",
        "0000000000000001_0000000000000001",  # positions inside a message are not handed out
        "0000000000000001_0000000000000000\n",
        "00000000000000001_0000000000000000",
    ],
)
def test_decoding_a_malformed_offset_is_a_bad_request(offset: str) -> None:
    """Only offsets this server hands out decode; anything else is a 400 naming the offset."""
    with pytest.raises(Invalid) as error:
        offsets.decode(offset)

    assert "offset" in error.value.message


def test_read_from_a_position_returns_exactly_the_later_messages(store: Store) -> None:
    """Reading from position p returns messages p.. and reports the tail as next position."""
    messages = [f"message {n}".encode() for n in range(12)]
    store.create("s", CreateRequest(TEXT, messages=messages[:5]))
    for message in messages[5:]:
        append(store, "s", message)

    for position in range(len(messages) + 1):
        result = store.read("s", position, max_bytes=EVERYTHING)
        assert result.messages == messages[position:]
        assert result.next_position == len(messages)
        assert result.up_to_date is True


def test_read_at_the_tail_returns_nothing_and_is_up_to_date(store: Store) -> None:
    """Reading at the tail (position None means "now") returns no messages."""
    store.create("s", CreateRequest(TEXT, messages=[b"a", b"b"]))

    at_now = store.read("s", None, max_bytes=EVERYTHING)

    assert (at_now.messages, at_now.next_position, at_now.up_to_date) == ([], 2, True)
    assert at_now.reached_end is False


def test_read_past_the_tail_is_a_bad_request(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, messages=[b"a"]))

    with pytest.raises(Invalid) as error:
        store.read("s", 2, max_bytes=EVERYTHING)

    assert "past the stream's tail" in error.value.message


def test_paged_reads_return_at_least_one_message_and_reassemble_exactly(store: Store) -> None:
    """max_bytes pages: each page has >= 1 message, is within the limit unless it holds a single
    oversized message, and the pages put together are exactly the stream."""
    sizes = [3, 7, 1, 40, 2, 2, 2, 9, 25, 1, 1, 6]
    messages = [bytes([65 + n]) * size for n, size in enumerate(sizes)]
    store.create("s", CreateRequest(BINARY, messages=messages))
    max_bytes = 10

    pages: list[list[bytes]] = []
    position = 0
    while True:
        result = store.read("s", position, max_bytes=max_bytes)
        if not result.messages:
            break
        pages.append(result.messages)
        assert result.next_position == position + len(result.messages)
        assert result.up_to_date == (result.next_position == len(messages))
        position = result.next_position

    assert [message for page in pages for message in page] == messages
    for page in pages:
        assert len(page) >= 1
        assert sum(map(len, page)) <= max_bytes or len(page) == 1
    assert [messages[3]] in pages  # a message larger than max_bytes still comes, alone
    assert len(pages) > 4


def test_operations_on_a_missing_stream_are_not_found(store: Store) -> None:
    for operation in (
        lambda: store.read("missing", 0, max_bytes=EVERYTHING),
        lambda: store.head("missing"),
        lambda: append(store, "missing", b"x"),
        lambda: append(store, "missing", close=True),
        lambda: store.delete("missing"),
    ):
        with pytest.raises(NotFound):
            operation()


def test_append_with_another_content_type_conflicts_and_stores_nothing(store: Store) -> None:
    """Data in another content type is refused; a close-only request ignores its content type."""
    store.create("s", CreateRequest(TEXT, messages=[b"a"]))
    before = snapshot(store, "s")

    with pytest.raises(Conflict) as error:
        append(store, "s", b"{}", content_type=JSON)
    assert "Content-Type" in error.value.message
    assert snapshot(store, "s") == before

    append(store, "s", b"b", content_type="Text/Plain; charset=utf-8")
    append(store, "s", close=True, content_type=JSON)
    assert snapshot(store, "s") == Snapshot([b"a", b"b"], 2, 2, True)


def test_appends_beyond_the_stream_size_limit_are_refused(engine: Engine) -> None:
    """With max_stream_bytes, an append that would pass the limit is a 413 and stores nothing."""
    store = Store(engine, InProcessHub(), max_stream_bytes=10)
    store.create("s", CreateRequest(TEXT, messages=[b"12345678"]))

    with pytest.raises(TooLarge):
        append(store, "s", b"abc")
    append(store, "s", b"ab")

    assert contents(store, "s") == [b"12345678", b"ab"]
    with pytest.raises(TooLarge):
        store.create("big", CreateRequest(TEXT, messages=[b"x" * 11]))
    with pytest.raises(NotFound):
        store.head("big")


# -- idempotent producers --------------------------------------------------------------------


def test_producer_appends_are_accepted_in_sequence(store: Store) -> None:
    """Seqs 0, 1, 2 are each stored once, and each result echoes the accepted seq."""
    store.create("s", CreateRequest(TEXT))

    results = [append(store, "s", f"m{n}".encode(), producer=claim("p", 0, n)) for n in range(3)]

    assert [(r.stored, r.producer_seq) for r in results] == [(True, 0), (True, 1), (True, 2)]
    assert contents(store, "s") == [b"m0", b"m1", b"m2"]


def test_producer_duplicate_is_acknowledged_but_not_stored_again(store: Store) -> None:
    """A retry of an accepted seq is stored=False and reports the highest accepted seq."""
    store.create("s", CreateRequest(TEXT))
    for n in range(3):
        append(store, "s", f"m{n}".encode(), producer=claim("p", 0, n))
    before = snapshot(store, "s")

    retry_last = append(store, "s", b"m2", producer=claim("p", 0, 2))
    retry_older = append(store, "s", b"other body", producer=claim("p", 0, 1))

    assert (retry_last.stored, retry_last.producer_seq) == (False, 2)
    assert (retry_older.stored, retry_older.producer_seq) == (False, 2)
    assert retry_last.stream.next_position == 3
    assert snapshot(store, "s") == before


def test_producer_sequence_gap_conflicts_with_expected_and_received(store: Store) -> None:
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"m0", producer=claim("p", 0, 0))
    before = snapshot(store, "s")

    with pytest.raises(SequenceGap) as error:
        append(store, "s", b"m2", producer=claim("p", 0, 2))

    assert (error.value.expected, error.value.received) == (1, 2)
    assert snapshot(store, "s") == before
    assert append(store, "s", b"m1", producer=claim("p", 0, 1)).stored is True


def test_stale_producer_epoch_is_forbidden(store: Store) -> None:
    """Once epoch 1 is established, epoch 0 is fenced with the current epoch in the headers."""
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"a", producer=claim("p", 0, 0))
    append(store, "s", b"b", producer=claim("p", 1, 0))
    before = snapshot(store, "s")

    with pytest.raises(ProducerFenced) as error:
        append(store, "s", b"zombie", producer=claim("p", 0, 1))

    assert error.value.current_epoch == 1
    assert snapshot(store, "s") == before


def test_new_epoch_starting_at_seq_zero_is_accepted(store: Store) -> None:
    """A producer restarting with a higher epoch and seq 0 is accepted, then continues at 1."""
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"a", producer=claim("p", 0, 0))
    append(store, "s", b"b", producer=claim("p", 0, 1))

    restarted = append(store, "s", b"c", producer=claim("p", 3, 0))
    then = append(store, "s", b"d", producer=claim("p", 3, 1))
    retry = append(store, "s", b"c", producer=claim("p", 3, 0))

    assert (restarted.stored, restarted.producer_seq) == (True, 0)
    assert (then.stored, retry.stored, retry.producer_seq) == (True, False, 1)
    assert contents(store, "s") == [b"a", b"b", b"c", b"d"]


def test_new_epoch_with_nonzero_seq_is_a_bad_request(store: Store) -> None:
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"a", producer=claim("p", 0, 0))
    before = snapshot(store, "s")

    with pytest.raises(Invalid) as error:
        append(store, "s", b"b", producer=claim("p", 1, 5))

    assert "Producer-Seq 0" in error.value.message
    assert snapshot(store, "s") == before
    assert append(store, "s", b"b", producer=claim("p", 0, 1)).stored is True  # epoch 0 kept


def test_new_producer_must_start_at_seq_zero(store: Store) -> None:
    """A producer the stream has never seen is refused at seq 3, accepted at seq 0 (any epoch)."""
    store.create("s", CreateRequest(TEXT))

    with pytest.raises(SequenceGap) as error:
        append(store, "s", b"late", producer=claim("p", 0, 3))

    assert error.value.expected == 0
    assert contents(store, "s") == []
    assert append(store, "s", b"first", producer=claim("p", 7, 0)).stored is True
    assert contents(store, "s") == [b"first"]


def test_producers_are_independent(store: Store) -> None:
    """Two producers keep their own sequences; their messages interleave in arrival order."""
    store.create("s", CreateRequest(TEXT))

    append(store, "s", b"A0", producer=claim("a", 0, 0))
    append(store, "s", b"B0", producer=claim("b", 0, 0))
    append(store, "s", b"A1", producer=claim("a", 0, 1))
    duplicate = append(store, "s", b"B0", producer=claim("b", 0, 0))
    append(store, "s", b"B1", producer=claim("b", 0, 1))

    assert duplicate.stored is False
    assert contents(store, "s") == [b"A0", b"B0", b"A1", b"B1"]


def test_producer_state_is_per_stream(store: Store) -> None:
    """The same producer id starts afresh on another stream."""
    store.create("one", CreateRequest(TEXT))
    store.create("two", CreateRequest(TEXT))
    append(store, "one", b"x", producer=claim("p", 0, 0))

    assert append(store, "two", b"y", producer=claim("p", 0, 0)).stored is True
    assert contents(store, "two") == [b"y"]


def test_producer_retry_is_recognised_before_the_stream_seq_check(store: Store) -> None:
    """A retried request that carried a Stream-Seq is a duplicate, not a Stream-Seq regression."""
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"a", producer=claim("p", 0, 0), stream_seq="001")

    retry = append(store, "s", b"a", producer=claim("p", 0, 0), stream_seq="001")

    assert retry.stored is False
    assert contents(store, "s") == [b"a"]


REJECTED_APPENDS: dict[str, tuple[AppendRequest, type[RunstreamError]]] = {
    "gap": (AppendRequest([b"x"], producer=claim("p", 1, 3)), Conflict),
    "stale-epoch": (AppendRequest([b"x"], producer=claim("p", 0, 2)), ProducerFenced),
    "new-epoch-nonzero-seq": (AppendRequest([b"x"], producer=claim("p", 2, 1)), Invalid),
    "new-producer-nonzero-seq": (AppendRequest([b"x"], producer=claim("q", 0, 1)), Conflict),
    "stream-seq-lower": (AppendRequest([b"x"], stream_seq="a"), Conflict),
    "stream-seq-equal": (AppendRequest([b"x"], stream_seq="b"), Conflict),
    "content-type": (AppendRequest([b"{}"], content_type=JSON), Conflict),
    # Valid producer claims refused for another reason must not advance the producer.
    "next-seq-with-stream-seq-regression": (
        AppendRequest([b"x"], producer=claim("p", 1, 2), stream_seq="a"),
        Conflict,
    ),
    "next-seq-with-content-type-mismatch": (
        AppendRequest([b"{}"], content_type=JSON, producer=claim("p", 1, 2)),
        Conflict,
    ),
    "new-producer-with-stream-seq-regression": (
        AppendRequest([b"x"], producer=claim("q", 0, 0), stream_seq="a"),
        Conflict,
    ),
}


@pytest.mark.parametrize("case", REJECTED_APPENDS)
def test_a_rejected_append_changes_nothing(store: Store, case: str) -> None:
    """After any rejected append the stream reads exactly as before, and producer state did not
    move: producer p's next seq and a new producer q's seq 0 are still the ones accepted."""
    request, error_type = REJECTED_APPENDS[case]
    store.create("s", CreateRequest(TEXT, messages=[b"start"]))
    append(store, "s", b"p1-0", producer=claim("p", 1, 0), stream_seq="a")
    append(store, "s", b"p1-1", producer=claim("p", 1, 1), stream_seq="b")
    before = snapshot(store, "s")

    with pytest.raises(error_type):
        store.append("s", request)

    assert snapshot(store, "s") == before
    assert append(store, "s", b"p1-2", producer=claim("p", 1, 2)).stored is True
    assert append(store, "s", b"q0-0", producer=claim("q", 0, 0)).stored is True
    assert contents(store, "s") == [*before.messages, b"p1-2", b"q0-0"]


# -- Stream-Seq ------------------------------------------------------------------------------


def test_stream_seq_must_strictly_increase(store: Store) -> None:
    """A Stream-Seq equal to or below the last accepted one is a Conflict and stores nothing."""
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"1", stream_seq="001")
    append(store, "s", b"2", stream_seq="002")
    append(store, "s", b"no seq")  # appends without Stream-Seq are always allowed
    before = snapshot(store, "s")

    for stale in ("001", "002", "0019"):
        with pytest.raises(Conflict) as error:
            append(store, "s", b"stale", stream_seq=stale)
        assert "Stream-Seq" in error.value.message
    assert snapshot(store, "s") == before
    append(store, "s", b"3", stream_seq="003")
    assert contents(store, "s") == [b"1", b"2", b"no seq", b"3"]


def test_stream_seq_compares_as_strings_not_numbers(store: Store) -> None:
    """As strings "10" < "2", so 2 then 10 conflicts; 09 then 10 is fine; "B" < "a"."""
    store.create("numeric", CreateRequest(TEXT))
    store.create("padded", CreateRequest(TEXT))
    store.create("case", CreateRequest(TEXT))

    append(store, "numeric", b"x", stream_seq="2")
    with pytest.raises(Conflict):
        append(store, "numeric", b"y", stream_seq="10")
    append(store, "padded", b"x", stream_seq="09")
    append(store, "padded", b"y", stream_seq="10")
    append(store, "case", b"x", stream_seq="a")
    with pytest.raises(Conflict):
        append(store, "case", b"y", stream_seq="B")  # "B" < "a" byte-wise

    assert contents(store, "numeric") == [b"x"]
    assert contents(store, "padded") == [b"x", b"y"]
    assert contents(store, "case") == [b"x"]


# -- closing ---------------------------------------------------------------------------------


def test_close_only_closes_without_moving_the_tail(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, messages=[b"a", b"b"]))

    result = append(store, "s", close=True)

    assert (result.stored, result.stream.closed, result.stream.next_position) == (True, True, 2)
    assert snapshot(store, "s") == Snapshot([b"a", b"b"], 2, 2, True)


def test_append_and_close_is_one_step(store: Store) -> None:
    """The final message is stored and the stream closed by the same request."""
    store.create("s", CreateRequest(TEXT, messages=[b"first"]))

    result = append(store, "s", b"final", close=True)

    assert (result.stored, result.stream.closed, result.stream.next_position) == (True, True, 2)
    assert contents(store, "s") == [b"first", b"final"]


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(AppendRequest([b"more"]), id="append"),
        pytest.param(AppendRequest([b"more"], close=True), id="append-and-close"),
        pytest.param(AppendRequest([b"more"], producer=claim("new", 0, 0)), id="new-producer"),
        pytest.param(AppendRequest([b"more"], producer=claim("p", 0, 1)), id="producer-next-seq"),
        pytest.param(AppendRequest([], close=True, producer=claim("p", 0, 1)), id="producer-close"),
        pytest.param(AppendRequest([b"{}"], content_type=JSON), id="content-type-mismatch"),
    ],
)
def test_append_after_close_conflicts_with_the_final_offset(
    store: Store, request_: AppendRequest
) -> None:
    """A closed stream refuses data with Stream-Closed and its final Stream-Next-Offset."""
    store.create("s", CreateRequest(TEXT, messages=[b"a"]))
    append(store, "s", b"b", producer=claim("p", 0, 0), close=True)
    before = snapshot(store, "s")

    with pytest.raises(StreamClosed) as error:
        store.append("s", request_)

    assert error.value.next_position == 2
    assert snapshot(store, "s") == before


def test_close_only_is_idempotent(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, messages=[b"a"]))
    append(store, "s", close=True)

    again = append(store, "s", close=True)

    assert (again.stored, again.stream.closed, again.stream.next_position) == (False, True, 1)
    assert snapshot(store, "s") == Snapshot([b"a"], 1, 1, True)


def test_producer_retry_of_a_closing_append_is_a_duplicate(store: Store) -> None:
    """The producer whose append closed the stream may retry it: success, nothing stored twice."""
    store.create("s", CreateRequest(TEXT))
    append(store, "s", b"m0", producer=claim("p", 0, 0))
    append(store, "s", b"last", producer=claim("p", 0, 1), close=True)

    retry = append(store, "s", b"last", producer=claim("p", 0, 1), close=True)

    assert (retry.stored, retry.producer_seq, retry.stream.closed) == (False, 1, True)
    assert snapshot(store, "s") == Snapshot([b"m0", b"last"], 2, 6, True)


def test_read_of_a_closed_stream_reports_reaching_the_end(store: Store) -> None:
    """reached_end only when the reader has everything of a closed stream."""
    store.create("open", CreateRequest(TEXT, messages=[b"a"]))
    store.create("s", CreateRequest(TEXT, messages=[b"aaaa", b"bbbb"], closed=True))

    partial = store.read("s", 0, max_bytes=4)
    rest = store.read("s", partial.next_position, max_bytes=4)
    at_end = store.read("s", None, max_bytes=4)

    assert (partial.messages, partial.reached_end) == ([b"aaaa"], False)
    assert (rest.messages, rest.reached_end) == ([b"bbbb"], True)
    assert (at_end.messages, at_end.reached_end) == ([], True)
    assert store.read("open", 0, max_bytes=EVERYTHING).reached_end is False


# -- TTL and expiry --------------------------------------------------------------------------


def test_stream_past_its_expires_at_is_not_found(store: Store) -> None:
    store.create(
        "s", CreateRequest(TEXT, messages=[b"a"], expires_at=utcnow() - timedelta(seconds=1))
    )

    for operation in (
        lambda: store.read("s", 0, max_bytes=EVERYTHING),
        lambda: store.head("s"),
        lambda: append(store, "s", b"b"),
        lambda: store.delete("s"),
    ):
        with pytest.raises(NotFound):
            operation()


def test_stream_idle_longer_than_its_ttl_is_not_found(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, messages=[b"a"], ttl_seconds=1))
    store.create("kept", CreateRequest(TEXT, messages=[b"a"], ttl_seconds=60))
    assert contents(store, "s") == [b"a"]

    time.sleep(1.1)

    with pytest.raises(NotFound):
        store.head("s")
    with pytest.raises(NotFound):
        store.read("s", 0, max_bytes=EVERYTHING)
    assert contents(store, "kept") == [b"a"]


def test_ttl_zero_expires_at_once(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, ttl_seconds=0))

    with pytest.raises(NotFound):
        store.head("s")


def test_purge_expired_removes_expired_streams_and_counts_them(store: Store) -> None:
    """purge_expired removes exactly the expired streams; their paths become free again."""
    store.create("past", CreateRequest(TEXT, expires_at=utcnow() - timedelta(seconds=1)))
    store.create("ttl", CreateRequest(TEXT, messages=[b"x"], ttl_seconds=1))
    store.create("future", CreateRequest(TEXT, expires_at=utcnow() + timedelta(hours=1)))
    store.create("forever", CreateRequest(TEXT, messages=[b"y"]))

    # Two seconds from now the one-second TTL has run out too.
    assert store.purge_expired(now=utcnow() + timedelta(seconds=2)) == 2
    assert store.purge_expired(now=utcnow() + timedelta(seconds=2)) == 0

    assert contents(store, "forever") == [b"y"]
    assert contents(store, "future") == []
    for purged in ("past", "ttl"):
        with pytest.raises(NotFound):
            store.head(purged)
    assert store.create("past", CreateRequest(JSON)).created is True
    assert store.create("ttl", CreateRequest(JSON)).created is True
    assert contents(store, "ttl") == []


def test_reads_and_writes_renew_a_sliding_ttl_but_head_does_not(store: Store) -> None:
    """TTL 1 s: a read at 0.6 s and an append at 1.2 s keep it alive past 1.8 s; a HEAD alone
    does not, so 1.1 s after the last append it is gone."""
    store.create("s", CreateRequest(TEXT, messages=[b"a"], ttl_seconds=1))

    time.sleep(0.6)
    assert contents(store, "s") == [b"a"]  # renews
    time.sleep(0.6)
    append(store, "s", b"b")  # 1.2 s after creation: alive only thanks to the read; renews
    time.sleep(0.6)
    assert store.head("s").next_position == 2  # alive thanks to the append; does not renew
    time.sleep(0.5)

    with pytest.raises(NotFound):
        store.head("s")


def test_expires_at_is_not_extended_by_reads(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, expires_at=utcnow() + timedelta(seconds=0.8)))
    time.sleep(0.4)
    assert contents(store, "s") == []
    time.sleep(0.6)

    with pytest.raises(NotFound):
        store.read("s", 0, max_bytes=EVERYTHING)


def test_a_ttl_over_a_century_is_refused(store: Store) -> None:
    """A TTL of 10^12 s would overflow date arithmetic on every later access: it is refused
    with a message that gives the limit, and nothing is created."""
    with pytest.raises(Invalid, match="Stream-TTL must be from 0 to"):
        store.create("s", CreateRequest(TEXT, messages=[b"a"], ttl_seconds=10**12))
    with pytest.raises(NotFound):
        store.head("s")


@pytest.mark.parametrize(
    ("field", "named"),
    [
        ("path", "stream path"),
        ("content-type", "Content-Type"),
        ("producer-id", "Producer-Id"),
        ("stream-seq", "Stream-Seq"),
    ],
)
def test_over_long_names_are_refused_and_change_nothing(
    store: Store, field: str, named: str
) -> None:
    """A 2000-character path, content type, Producer-Id or Stream-Seq is longer than its column:
    a 400 that names the field and its limit on every database, never a database error."""
    long = "x" * 2000
    if field in ("path", "content-type"):
        path = long if field == "path" else "s"
        content_type = f"text/{long}" if field == "content-type" else TEXT
        with pytest.raises(Invalid, match=f"{named} is .* characters long; the limit is"):
            store.create(path, CreateRequest(content_type, messages=[b"a"]))
        return
    store.create("s", CreateRequest(TEXT, messages=[b"a"]))
    producer = claim(long, 0, 0) if field == "producer-id" else None
    stream_seq = long if field == "stream-seq" else None
    with pytest.raises(Invalid, match=f"{named} is .* characters long; the limit is"):
        append(store, "s", b"b", producer=producer, stream_seq=stream_seq)
    assert contents(store, "s") == [b"a"]


@pytest.mark.parametrize("path", ["a\x00b", "a\nb", "a\x7fb"])
def test_a_path_with_a_control_character_is_refused(store: Store, path: str) -> None:
    """A stream path may arrive with a NUL or a newline in it (``/v1/stream/a%00b``): creating
    it is a 400 that says why, and reading it is a plain 404, on every database."""
    with pytest.raises(Invalid, match="control characters"):
        store.create(path, CreateRequest(TEXT, messages=[b"a"]))
    with pytest.raises(NotFound):
        store.head(path)
    with pytest.raises(NotFound):
        store.append(path, AppendRequest([b"x"], content_type=TEXT))


# -- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_stream_and_frees_its_path(store: Store) -> None:
    store.create("s", CreateRequest(TEXT, messages=[b"old"]))
    append(store, "s", b"old too", producer=claim("p", 0, 0), stream_seq="5")

    store.delete("s")

    with pytest.raises(NotFound):
        store.head("s")
    with pytest.raises(NotFound):
        store.delete("s")
    # A new stream at the path shares nothing with the old one: data, producers, Stream-Seq.
    assert store.create("s", CreateRequest(TEXT)).created is True
    assert contents(store, "s") == []
    assert append(store, "s", b"new", producer=claim("p", 0, 0), stream_seq="1").stored is True
    assert contents(store, "s") == [b"new"]


def test_delete_of_a_stream_with_forks_is_a_soft_delete(store: Store) -> None:
    """The source becomes Gone, its path cannot be reused, and the fork still reads its data."""
    store.create("src", CreateRequest(TEXT, messages=[b"a", b"b"]))
    store.create("fork", CreateRequest("", fork=ForkRequest("src")))
    append(store, "fork", b"c")

    store.delete("src")

    for operation in (
        lambda: store.read("src", 0, max_bytes=EVERYTHING),
        lambda: store.head("src"),
        lambda: append(store, "src", b"x"),
        lambda: store.delete("src"),
    ):
        with pytest.raises(Gone):
            operation()
    with pytest.raises(Conflict):
        store.create("src", CreateRequest(TEXT))
    with pytest.raises(Conflict):
        store.create("fork-of-deleted", CreateRequest("", fork=ForkRequest("src")))
    assert contents(store, "fork") == [b"a", b"b", b"c"]


def test_deleting_the_last_fork_removes_a_soft_deleted_source(store: Store) -> None:
    """Once no fork reads it, the deleted source is gone for good and its path is free."""
    store.create("src", CreateRequest(TEXT, messages=[b"a"]))
    store.create("fork1", CreateRequest("", fork=ForkRequest("src")))
    store.create("fork2", CreateRequest("", fork=ForkRequest("src")))
    store.delete("src")

    store.delete("fork1")
    with pytest.raises(Gone):
        store.head("src")  # fork2 still reads it
    assert contents(store, "fork2") == [b"a"]

    store.delete("fork2")
    with pytest.raises(NotFound):
        store.head("src")
    assert store.create("src", CreateRequest(JSON, messages=[b"1"])).created is True
    assert contents(store, "src") == [b"1"]


def test_deleting_a_fork_chain_cascades(store: Store) -> None:
    """L0 <- L1 <- L2: with L0 and L1 deleted, L2 reads all three; deleting L2 frees all."""
    store.create("l0", CreateRequest(TEXT, messages=[b"A"]))
    store.create("l1", CreateRequest("", fork=ForkRequest("l0")))
    append(store, "l1", b"B")
    store.create("l2", CreateRequest("", fork=ForkRequest("l1")))
    append(store, "l2", b"C")

    store.delete("l1")
    store.delete("l0")
    assert contents(store, "l2") == [b"A", b"B", b"C"]

    store.delete("l2")
    for path in ("l0", "l1", "l2"):
        with pytest.raises(NotFound):
            store.head(path)
        assert store.create(path, CreateRequest(TEXT)).created is True


def test_an_expired_source_keeps_the_data_its_forks_read(store: Store) -> None:
    """Purging an expired source frees its path but the fork still reads the inherited data."""
    store.create("src", CreateRequest(TEXT, messages=[b"a", b"b"], ttl_seconds=1))
    store.create("fork", CreateRequest("", ttl_seconds=3600, fork=ForkRequest("src")))

    assert store.purge_expired(now=utcnow() + timedelta(seconds=2)) == 1

    assert contents(store, "fork") == [b"a", b"b"]
    assert store.create("src", CreateRequest(TEXT, messages=[b"new"])).created is True
    assert contents(store, "src") == [b"new"]
    assert contents(store, "fork") == [b"a", b"b"]
    store.delete("fork")
    assert contents(store, "src") == [b"new"]


# -- forks -----------------------------------------------------------------------------------


def test_fork_inherits_data_up_to_the_fork_offset(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, messages=[b"a", b"b", b"c", b"d"]))

    at_two = store.create("fork", CreateRequest("", fork=ForkRequest("src", offsets.encode(2))))
    store.create("tail", CreateRequest("", fork=ForkRequest("src")))
    store.create("start", CreateRequest("", fork=ForkRequest("src", offsets.START)))

    assert (at_two.created, at_two.stream.next_position, at_two.stream.content_type) == (
        True,
        2,
        TEXT,
    )
    assert contents(store, "fork") == [b"a", b"b"]
    assert contents(store, "tail") == [b"a", b"b", b"c", b"d"]
    assert contents(store, "start") == []


def test_fork_and_source_grow_independently(store: Store) -> None:
    """Source appends after the fork are invisible in it; fork appends continue its offsets."""
    store.create("src", CreateRequest(TEXT, messages=[b"a", b"b"]))
    store.create("fork", CreateRequest("", fork=ForkRequest("src")))

    append(store, "src", b"source only")
    fork_result = append(store, "fork", b"fork only")

    assert fork_result.stream.next_position == 3
    assert contents(store, "src") == [b"a", b"b", b"source only"]
    assert contents(store, "fork") == [b"a", b"b", b"fork only"]
    assert contents(store, "fork", 2) == [b"fork only"]
    assert contents(store, "fork", 1) == [b"b", b"fork only"]


def test_fork_reads_page_across_the_fork_boundary(store: Store) -> None:
    store.create("src", CreateRequest(BINARY, messages=[b"1234", b"5678"]))
    store.create("fork", CreateRequest("", fork=ForkRequest("src")))
    append(store, "fork", b"9abc")

    first = store.read("fork", 0, max_bytes=8)
    second = store.read("fork", first.next_position, max_bytes=8)

    assert (first.messages, first.up_to_date) == ([b"1234", b"5678"], False)
    assert (second.messages, second.up_to_date) == ([b"9abc"], True)


def test_fork_of_a_fork(store: Store) -> None:
    store.create("l0", CreateRequest(TEXT, messages=[b"A", b"B"]))
    store.create("l1", CreateRequest("", fork=ForkRequest("l0")))
    append(store, "l1", b"C")
    store.create("l2", CreateRequest("", fork=ForkRequest("l1")))
    append(store, "l0", b"X0")
    append(store, "l1", b"X1")
    append(store, "l2", b"X2")
    # A fork of l1 below l1's own fork point reads only l0's data.
    store.create("low", CreateRequest("", fork=ForkRequest("l1", offsets.encode(1))))

    assert contents(store, "l0") == [b"A", b"B", b"X0"]
    assert contents(store, "l1") == [b"A", b"B", b"C", b"X1"]
    assert contents(store, "l2") == [b"A", b"B", b"C", b"X2"]
    assert contents(store, "low") == [b"A"]


def test_fork_json_sub_offset_inherits_that_many_messages(store: Store) -> None:
    store.create("src", CreateRequest(JSON, messages=[b'{"a":1}', b'{"b":2}', b'{"c":3}']))

    fork = store.create("fork", CreateRequest("", fork=ForkRequest("src", offsets.START, 2)))
    append(store, "fork", b'{"d":4}')

    assert fork.stream.next_position == 2
    assert contents(store, "fork") == [b'{"a":1}', b'{"b":2}', b'{"d":4}']
    with pytest.raises(Invalid):
        store.create("over", CreateRequest("", fork=ForkRequest("src", offsets.START, 4)))


def test_fork_byte_sub_offset_copies_a_message_prefix(store: Store) -> None:
    """Sub-offset 3 of "hello" gives a fork that reads "hel"; its appends follow it."""
    store.create("src", CreateRequest(TEXT, messages=[b"first", b"hello", b"after"]))

    store.create("fork", CreateRequest("", fork=ForkRequest("src", offsets.encode(1), 3)))
    append(store, "fork", b"LO")
    store.create("whole", CreateRequest("", fork=ForkRequest("src", offsets.encode(1), 5)))

    assert b"".join(contents(store, "fork")) == b"firsthelLO"
    assert b"".join(contents(store, "whole")) == b"firsthello"
    assert contents(store, "src") == [b"first", b"hello", b"after"]
    with pytest.raises(Invalid):
        store.create("over", CreateRequest("", fork=ForkRequest("src", offsets.encode(1), 6)))
    with pytest.raises(Invalid):
        store.create("at-tail", CreateRequest("", fork=ForkRequest("src", None, 1)))


def test_byte_sub_offsets_compose_across_fork_levels(store: Store) -> None:
    store.create("l0", CreateRequest(TEXT, messages=[b"abcdef"]))
    store.create("l1", CreateRequest("", fork=ForkRequest("l0", offsets.START, 4)))
    store.create("l2", CreateRequest("", fork=ForkRequest("l1", offsets.START, 2)))
    append(store, "l2", b"Z")

    assert b"".join(contents(store, "l1")) == b"abcd"
    assert b"".join(contents(store, "l2")) == b"abZ"


def test_fork_creation_errors(store: Store) -> None:
    """Missing source: NotFound; offset past the tail: Invalid; other type: Conflict."""
    store.create("src", CreateRequest(TEXT, messages=[b"a"]))

    with pytest.raises(NotFound):
        store.create("f1", CreateRequest("", fork=ForkRequest("missing")))
    with pytest.raises(Invalid):
        store.create("f2", CreateRequest("", fork=ForkRequest("src", offsets.encode(2))))
    with pytest.raises(Conflict):
        store.create("f3", CreateRequest(JSON, fork=ForkRequest("src")))
    for path in ("f1", "f2", "f3"):
        with pytest.raises(NotFound):
            store.head(path)
    # A rejected fork holds no reference: the source is deleted outright, not soft-deleted.
    store.delete("src")
    with pytest.raises(NotFound):
        store.head("src")


def test_fork_of_a_closed_source_is_open(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, messages=[b"a"], closed=True))

    fork = store.create("fork", CreateRequest("", fork=ForkRequest("src")))
    append(store, "fork", b"b")

    assert fork.stream.closed is False
    assert contents(store, "fork") == [b"a", b"b"]
    assert store.head("src").closed is True


def test_fork_does_not_inherit_producer_or_stream_seq_state(store: Store) -> None:
    store.create("src", CreateRequest(TEXT))
    append(store, "src", b"a", producer=claim("p", 0, 0), stream_seq="9")
    store.create("fork", CreateRequest("", fork=ForkRequest("src")))

    result = append(store, "fork", b"b", producer=claim("p", 0, 0), stream_seq="1")

    assert result.stored is True
    assert contents(store, "fork") == [b"a", b"b"]


def test_fork_inherits_the_source_ttl_unless_given_its_own(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, ttl_seconds=3600))

    store.create("inherits", CreateRequest("", fork=ForkRequest("src")))
    store.create("own", CreateRequest("", ttl_seconds=60, fork=ForkRequest("src")))

    assert store.head("inherits").ttl_seconds == 3600
    assert store.head("own").ttl_seconds == 60


def test_repeated_fork_creation_is_idempotent(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, messages=[b"a", b"b"]))
    fork = ForkRequest("src", offsets.encode(1))
    store.create("fork", CreateRequest("", fork=fork))

    again = store.create("fork", CreateRequest(TEXT, fork=fork))

    assert again.created is False
    with pytest.raises(Conflict):
        store.create("fork", CreateRequest("", fork=ForkRequest("src", offsets.encode(2))))
    with pytest.raises(Conflict):
        store.create("fork", CreateRequest(TEXT))  # not a fork


def test_repeating_a_fork_of_a_source_with_a_ttl_is_idempotent(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, ttl_seconds=3600))
    store.create("fork", CreateRequest("", fork=ForkRequest("src")))

    assert store.create("fork", CreateRequest("", fork=ForkRequest("src"))).created is False


def test_repeating_a_fork_from_the_start_is_idempotent(store: Store) -> None:
    store.create("src", CreateRequest(TEXT, messages=[b"a"]))
    fork = ForkRequest("src", offsets.START)
    store.create("fork", CreateRequest("", fork=fork))

    assert store.create("fork", CreateRequest("", fork=fork)).created is False


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_producers", [False, True], ids=["plain", "producers"])
def test_concurrent_appends_are_each_stored_once_in_order(
    store: Store, with_producers: bool
) -> None:
    """8 threads x 50 appends: 400 messages at positions 0..399, each once, each thread's in
    its own order, and each append told the position its message really has."""
    threads, per_thread = 8, 50
    store.create("s", CreateRequest(BINARY))
    barrier = threading.Barrier(threads)

    def writer(thread: int) -> list[tuple[bytes, int]]:
        barrier.wait()
        told = []
        for n in range(per_thread):
            message = f"{thread}:{n}".encode()
            producer = claim(f"writer-{thread}", 0, n) if with_producers else None
            result = append(store, "s", message, producer=producer)
            assert result.stored is True
            told.append((message, result.stream.next_position - 1))
        return told

    with ThreadPoolExecutor(threads) as pool:
        reports = [item for told in pool.map(writer, range(threads)) for item in told]

    stored = contents(store, "s")
    assert len(stored) == threads * per_thread
    assert Counter(stored) == Counter(message for message, _ in reports)
    assert max(Counter(stored).values()) == 1
    assert all(stored[position] == message for message, position in reports)
    assert store.head("s").next_position == threads * per_thread
    for thread in range(threads):
        own = [int(m.split(b":")[1]) for m in stored if m.startswith(f"{thread}:".encode())]
        assert own == list(range(per_thread))


def test_two_stores_sharing_a_database_append_safely(store: Store, engine: Engine) -> None:
    """Two stores on one database (as two server processes would be) appending at once:
    every message is stored once, at positions 0..N-1."""
    other = Store(engine, InProcessHub())
    store.create("s", CreateRequest(BINARY))
    barrier = threading.Barrier(8)

    def writer(thread: int) -> None:
        target = store if thread % 2 else other
        barrier.wait()
        for n in range(25):
            append(target, "s", f"{thread}:{n}".encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))

    stored = contents(store, "s")
    assert sorted(stored) == sorted(f"{t}:{n}".encode() for t in range(8) for n in range(25))
    assert store.head("s").next_position == other.head("s").next_position == 200
