"""The Durable Streams HTTP protocol, over a real socket to a real `runstream serve`."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import AUTH, ServerProcess, start_server

from runstream.server.core import offsets

TEXT = "text/plain"
JSON = "application/json"
BINARY = "application/octet-stream"
OFFSET_ZERO = "0000000000000000_0000000000000000"
# SSE responses send a keep-alive comment only after 5 idle seconds: a 3-second read timeout
# turns a response that never ends (or never sends the expected event) into a failure.
SSE_TIMEOUT = httpx.Timeout(10, read=3)
LIMIT = 1024  # RUNSTREAM_MAX_APPEND_BYTES of the small_server fixture


# -- helpers ---------------------------------------------------------------------------------


def send(
    client: httpx.Client,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    content_type: str | None = TEXT,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A request with a body; ``content_type=None`` sends none."""
    all_headers = {"Content-Type": content_type} if content_type else {}
    return client.request(method, url, content=body, headers={**all_headers, **(headers or {})})


def put(client: httpx.Client, url: str, body: bytes = b"", **options: Any) -> httpx.Response:
    return send(client, "PUT", url, body, **options)


def post(client: httpx.Client, url: str, body: bytes = b"", **options: Any) -> httpx.Response:
    return send(client, "POST", url, body, **options)


def producer(producer_id: str, epoch: int, seq: int) -> dict[str, str]:
    return {"Producer-Id": producer_id, "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}


CLOSE = {"Stream-Closed": "true"}


@contextmanager
def long_poll_in_background(url: str, offset: str) -> Iterator[list[httpx.Response]]:
    """Long-poll ``url`` at ``offset`` from another thread while the ``with`` body runs; the
    list holds the response once the block has ended."""
    responses: list[httpx.Response] = []

    def poll() -> None:
        params = {"offset": offset, "live": "long-poll"}
        responses.append(httpx.get(url, params=params, headers=AUTH, timeout=10))

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)  # let it reach the server and wait; its 1 s timeout is far away
    yield responses
    poller.join(10)


@dataclass(frozen=True)
class Observed:
    """Everything a reader can see of a stream, to compare before and after a request."""

    status: int
    body: bytes
    next_offset: str | None
    closed: str | None
    content_type: str | None
    ttl: str | None


def observe(client: httpx.Client, url: str) -> Observed:
    read = client.get(url, params={"offset": "-1"})
    head = client.head(url)
    return Observed(
        read.status_code,
        read.content,
        read.headers.get("Stream-Next-Offset"),
        read.headers.get("Stream-Closed"),
        read.headers.get("Content-Type"),
        head.headers.get("Stream-TTL"),
    )


@dataclass
class Event:
    type: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """Parse a text/event-stream body into events as they arrive (comments are skipped)."""
    event_type: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if event_type is not None or data:
                yield Event(event_type or "message", "\n".join(data))
            event_type, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data.append(value)


def is_cursor(value: str | None) -> bool:
    return value is not None and re.fullmatch(r"[0-9]+", value) is not None


def path_of(url: str) -> str:
    return url.removeprefix("/v1/stream/")


# -- create, append, read, head, delete ------------------------------------------------------


def test_put_creates_a_stream(client: httpx.Client, server: ServerProcess, stream_url: str) -> None:
    response = put(client, stream_url)

    assert response.status_code == 201
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["Location"] == server.url + stream_url
    assert response.headers["Stream-Next-Offset"] == OFFSET_ZERO
    assert "Stream-Closed" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_put_again_is_200_with_the_same_config_and_409_with_another(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url, b"data", headers={"Stream-TTL": "3600"})

    same = put(client, stream_url, content_type="TEXT/PLAIN", headers={"Stream-TTL": "3600"})
    other_type = put(client, stream_url, content_type=JSON, headers={"Stream-TTL": "3600"})
    other_ttl = put(client, stream_url, headers={"Stream-TTL": "60"})

    assert same.status_code == 200
    assert "Location" not in same.headers
    assert same.headers["Stream-Next-Offset"] == offsets.encode(1)
    assert other_type.status_code == 409
    assert "content type is 'text/plain'" in other_type.text
    assert other_ttl.status_code == 409
    assert "Stream-TTL is 3600" in other_ttl.text
    assert client.get(stream_url).content == b"data"


def test_put_without_content_type_makes_an_octet_stream(
    client: httpx.Client, stream_url: str
) -> None:
    response = put(client, stream_url, content_type=None)

    assert response.status_code == 201
    assert response.headers["Content-Type"] == BINARY
    assert client.head(stream_url).headers["Content-Type"] == BINARY


def test_put_with_a_body_then_get(client: httpx.Client, stream_url: str) -> None:
    """The initial body is the first data; GET returns it with the stream's exact type."""
    put(client, stream_url, b"initial stream content")

    response = client.get(stream_url)

    assert response.status_code == 200
    assert response.content == b"initial stream content"
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["Stream-Next-Offset"] == offsets.encode(1)
    assert response.headers["Stream-Up-To-Date"] == "true"
    assert "Stream-Closed" not in response.headers
    assert response.headers["ETag"]


def test_post_appends_and_offsets_increase(client: httpx.Client, stream_url: str) -> None:
    """Each POST is a 204 whose Stream-Next-Offset sorts after the previous one; reading from
    any returned offset gives exactly what was appended after it."""
    start = put(client, stream_url).headers["Stream-Next-Offset"]
    chunks = [b"chunk1", b"chunk2", b"chunk3", b"chunk4"]

    responses = [post(client, stream_url, chunk) for chunk in chunks]

    assert [r.status_code for r in responses] == [204] * 4
    assert all(r.content == b"" for r in responses)
    tails = [r.headers["Stream-Next-Offset"] for r in responses]
    assert [start, *tails] == sorted({start, *tails})
    assert client.get(stream_url).content == b"".join(chunks)
    for index, offset in enumerate([start, *tails]):
        read = client.get(stream_url, params={"offset": offset})
        assert read.content == b"".join(chunks[index:])
        assert read.headers["Stream-Next-Offset"] == tails[-1]


def test_binary_data_round_trips_byte_for_byte(client: httpx.Client, stream_url: str) -> None:
    payload = bytes(range(256)) * 4 + b"\r\n\x00"
    put(client, stream_url, content_type=BINARY)

    post(client, stream_url, payload, content_type=BINARY)

    assert client.get(stream_url).content == payload


def test_head_reports_metadata_without_a_body(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"abc", headers={"Stream-TTL": "3600"})

    response = client.head(stream_url)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Type"] == TEXT
    assert response.headers["Stream-Next-Offset"] == offsets.encode(1)
    assert response.headers["Stream-TTL"] == "3600"
    assert "no-store" in response.headers["Cache-Control"]
    assert "Stream-Closed" not in response.headers


def test_head_reports_an_expiry_time(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, headers={"Stream-Expires-At": "2999-01-02T03:04:05.678+01:00"})

    response = client.head(stream_url)

    assert response.headers["Stream-Expires-At"] == "2999-01-02T02:04:05.678000Z"
    assert "Stream-TTL" not in response.headers


def test_delete_removes_the_stream(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"old data")

    deleted = client.delete(stream_url)

    assert deleted.status_code == 204
    assert client.get(stream_url).status_code == 404
    assert client.head(stream_url).status_code == 404
    assert post(client, stream_url, b"more").status_code == 404
    assert client.delete(stream_url).status_code == 404
    assert put(client, stream_url, b"new data").status_code == 201
    assert client.get(stream_url).content == b"new data"


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD"])
def test_a_missing_stream_is_404(client: httpx.Client, stream_url: str, method: str) -> None:
    response = client.request(
        method,
        stream_url,
        content=b"x" if method == "POST" else None,
        headers={"Content-Type": TEXT},
    )

    assert response.status_code == 404
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if method != "HEAD":
        assert f"stream '{path_of(stream_url)}' does not exist" in response.text
        assert response.headers["Content-Type"].startswith("text/plain")


def test_etag_gives_304_until_the_stream_changes(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"data")
    first = client.get(stream_url)
    etag = first.headers["ETag"]

    unchanged = client.get(stream_url, headers={"If-None-Match": etag})
    wrong = client.get(stream_url, headers={"If-None-Match": '"wrong-etag"'})
    post(client, stream_url, b" more")
    changed = client.get(stream_url, headers={"If-None-Match": etag})

    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["ETag"] == etag
    assert (wrong.status_code, wrong.content) == (200, b"data")
    assert (changed.status_code, changed.content) == (200, b"data more")
    assert changed.headers["ETag"] != etag


def test_etag_changes_when_the_stream_closes(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"data")
    etag = client.get(stream_url).headers["ETag"]
    post(client, stream_url, content_type=None, headers=CLOSE)

    after_close = client.get(stream_url, headers={"If-None-Match": etag})

    assert after_close.status_code == 200
    assert after_close.headers["Stream-Closed"] == "true"
    assert after_close.headers["ETag"] != etag


def test_read_at_the_tail_is_200_empty_and_up_to_date(
    client: httpx.Client, stream_url: str
) -> None:
    tail = put(client, stream_url, b"data").headers["Stream-Next-Offset"]

    at_tail = client.get(stream_url, params={"offset": tail})
    now = client.get(stream_url, params={"offset": "now"})

    for response in (at_tail, now):
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["Stream-Up-To-Date"] == "true"
        assert response.headers["Stream-Next-Offset"] == tail
    assert "no-store" in now.headers["Cache-Control"]
    post(client, stream_url, b"new data")
    assert client.get(stream_url, params={"offset": tail}).content == b"new data"


def test_stream_seq_over_http(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)

    first = post(client, stream_url, b"a", headers={"Stream-Seq": "2"})
    numeric_but_lower = post(client, stream_url, b"b", headers={"Stream-Seq": "10"})
    higher = post(client, stream_url, b"c", headers={"Stream-Seq": "3"})

    assert (first.status_code, numeric_but_lower.status_code, higher.status_code) == (204, 409, 204)
    assert "Stream-Seq '10' is not greater" in numeric_but_lower.text
    assert client.get(stream_url).content == b"ac"


def test_unknown_query_parameters_are_ignored(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"data")

    response = client.get(stream_url, params={"offset": "-1", "foo": "bar"})

    assert (response.status_code, response.content) == (200, b"data")


# -- JSON mode -------------------------------------------------------------------------------


def test_json_stream_reads_back_as_one_array(client: httpx.Client, stream_url: str) -> None:
    """Arrays are flattened one level on write; a read returns one array of all messages."""
    created = put(client, stream_url, b'[{"n": 1}]', content_type=JSON)
    post(client, stream_url, b'[{"n":2}, [3, 4]]', content_type=JSON)
    tail = post(client, stream_url, b'{"n":5}', content_type=JSON).headers["Stream-Next-Offset"]

    response = client.get(stream_url)
    later = client.get(stream_url, params={"offset": created.headers["Stream-Next-Offset"]})
    at_now = client.get(stream_url, params={"offset": "now"})

    assert response.headers["Content-Type"] == JSON
    assert response.json() == [{"n": 1}, {"n": 2}, [3, 4], {"n": 5}]
    assert response.content == b'[{"n": 1},{"n":2},[3, 4],{"n":5}]'  # each message as sent
    assert response.headers["Stream-Next-Offset"] == tail == offsets.encode(4)
    assert later.json() == [{"n": 2}, [3, 4], {"n": 5}]
    assert (at_now.content, at_now.headers["Content-Type"]) == (b"[]", JSON)


def test_json_stream_created_with_an_empty_array_is_empty(
    client: httpx.Client, stream_url: str
) -> None:
    created = put(client, stream_url, b"[]", content_type=JSON)

    response = client.get(stream_url)

    assert created.status_code == 201
    assert created.headers["Stream-Next-Offset"] == OFFSET_ZERO
    assert (response.content, response.headers["Stream-Up-To-Date"]) == (b"[]", "true")


def test_json_content_type_with_parameters_is_json_mode(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url, b"[1, 2]", content_type="application/json; charset=utf-8")

    post(client, stream_url, b"[3]", content_type="Application/JSON")

    assert client.get(stream_url).json() == [1, 2, 3]


# -- closing ---------------------------------------------------------------------------------


def test_closing_a_stream(client: httpx.Client, stream_url: str) -> None:
    """Append-and-close, then: appends are 409 with the final offset, close-only is a 204."""
    put(client, stream_url, b"first ")
    closing = post(client, stream_url, b"final", headers=CLOSE)
    final = closing.headers["Stream-Next-Offset"]

    refused = post(client, stream_url, b"late")
    refused_close = post(client, stream_url, b"late", headers=CLOSE)
    refused_mismatch = post(client, stream_url, b"{}", content_type=JSON)
    close_again = post(client, stream_url, content_type=None, headers=CLOSE)
    read = client.get(stream_url)

    assert (closing.status_code, closing.headers["Stream-Closed"]) == (204, "true")
    for response in (refused, refused_close, refused_mismatch):
        assert response.status_code == 409
        assert response.headers["Stream-Closed"] == "true"
        assert response.headers["Stream-Next-Offset"] == final
        assert "is closed" in response.text
    assert (close_again.status_code, close_again.headers["Stream-Closed"]) == (204, "true")
    assert close_again.headers["Stream-Next-Offset"] == final
    assert read.content == b"first final"
    assert read.headers["Stream-Closed"] == "true"
    assert read.headers["Stream-Up-To-Date"] == "true"
    assert client.head(stream_url).headers["Stream-Closed"] == "true"


def test_close_only_does_not_move_the_tail(client: httpx.Client, stream_url: str) -> None:
    tail = put(client, stream_url, b'"data"', content_type=JSON).headers["Stream-Next-Offset"]

    # Close-only ignores a content type that does not match: there is no data to check.
    closed = post(client, stream_url, content_type=TEXT, headers=CLOSE)

    assert (closed.status_code, closed.headers["Stream-Next-Offset"]) == (204, tail)
    at_end = client.get(stream_url, params={"offset": tail})
    assert (at_end.status_code, at_end.content) == (200, b"[]")
    assert at_end.headers["Stream-Closed"] == "true"


def test_put_can_create_a_closed_stream(client: httpx.Client, stream_url: str) -> None:
    created = put(client, stream_url, b"complete", headers=CLOSE)

    assert (created.status_code, created.headers["Stream-Closed"]) == (201, "true")
    assert post(client, stream_url, b"more").status_code == 409
    assert client.get(stream_url).content == b"complete"


def test_stream_closed_values_other_than_true_are_ignored(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url)

    response = post(client, stream_url, b"data", headers={"Stream-Closed": "yes"})

    assert response.status_code == 204
    assert "Stream-Closed" not in response.headers
    assert "Stream-Closed" not in client.head(stream_url).headers


# -- forks -----------------------------------------------------------------------------------


def test_fork_over_http(client: httpx.Client, stream_url: str) -> None:
    """A fork inherits its source's type and data up to the fork offset, then grows alone."""
    fork_offset = put(client, stream_url, b'"first"', content_type=JSON).headers[
        "Stream-Next-Offset"
    ]
    post(client, stream_url, b'"second"', content_type=JSON)
    fork_url = stream_url + "-fork"

    created = put(
        client,
        fork_url,
        content_type=None,
        headers={"Stream-Forked-From": stream_url, "Stream-Fork-Offset": fork_offset},
    )
    post(client, fork_url, b'"fork"', content_type=JSON)

    assert created.status_code == 201
    assert created.headers["Content-Type"] == JSON
    assert "Stream-Forked-From" not in created.headers
    assert client.get(fork_url).json() == ["first", "fork"]
    assert client.get(stream_url).json() == ["first", "second"]


def test_fork_body_without_content_type_is_flattened_like_its_source(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url, b'[{"a":1}]', content_type=JSON)
    fork_url = stream_url + "-fork"

    put(
        client,
        fork_url,
        b'[{"b":2}]',
        content_type=None,
        headers={"Stream-Forked-From": stream_url},
    )

    assert client.get(fork_url).json() == [{"a": 1}, {"b": 2}]


def test_fork_body_without_content_type_must_be_valid_json_for_a_json_source(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url, b'[{"a":1}]', content_type=JSON)
    fork_url = stream_url + "-fork"

    response = put(
        client, fork_url, b"{oops", content_type=None, headers={"Stream-Forked-From": stream_url}
    )

    assert response.status_code == 400
    assert client.head(fork_url).status_code == 404


# -- long-poll -------------------------------------------------------------------------------


def test_long_poll_returns_existing_data_at_once(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"existing data")

    response = client.get(stream_url, params={"offset": "-1", "live": "long-poll"})

    assert (response.status_code, response.content) == (200, b"existing data")
    assert response.headers["Stream-Up-To-Date"] == "true"
    assert response.headers["Stream-Next-Offset"] == offsets.encode(1)
    assert is_cursor(response.headers.get("Stream-Cursor"))


def test_long_poll_wakes_when_data_is_appended(
    server: ServerProcess, client: httpx.Client, stream_url: str
) -> None:
    """A long-poll at the tail answers with exactly the data appended while it waited."""
    tail = put(client, stream_url, b"before").headers["Stream-Next-Offset"]

    with long_poll_in_background(server.url + stream_url, tail) as responses:
        appended = post(client, stream_url, b"after")

    [response] = responses
    assert (response.status_code, response.content) == (200, b"after")
    assert response.headers["Stream-Next-Offset"] == appended.headers["Stream-Next-Offset"]
    assert response.headers["Stream-Up-To-Date"] == "true"
    assert is_cursor(response.headers.get("Stream-Cursor"))


def test_long_poll_times_out_with_204(client: httpx.Client, stream_url: str) -> None:
    tail = put(client, stream_url, b"data").headers["Stream-Next-Offset"]

    response = client.get(stream_url, params={"offset": tail, "live": "long-poll"})
    at_now = client.get(stream_url, params={"offset": "now", "live": "long-poll"})

    for timed_out in (response, at_now):
        assert (timed_out.status_code, timed_out.content) == (204, b"")
        assert timed_out.headers["Stream-Up-To-Date"] == "true"
        assert timed_out.headers["Stream-Next-Offset"] == tail
        assert is_cursor(timed_out.headers.get("Stream-Cursor"))
        assert "Stream-Closed" not in timed_out.headers


def test_long_poll_cursor_moves_past_the_cursor_sent(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"data")
    params = {"offset": "-1", "live": "long-poll"}
    cursor = client.get(stream_url, params=params).headers["Stream-Cursor"]

    again = client.get(stream_url, params={**params, "cursor": cursor})

    assert int(again.headers["Stream-Cursor"]) > int(cursor)


def test_long_poll_at_the_end_of_a_closed_stream_is_204_closed(
    client: httpx.Client, stream_url: str
) -> None:
    tail = put(client, stream_url, b"all", headers=CLOSE).headers["Stream-Next-Offset"]

    response = client.get(stream_url, params={"offset": tail, "live": "long-poll"})

    assert (response.status_code, response.content) == (204, b"")
    assert response.headers["Stream-Closed"] == "true"
    assert response.headers["Stream-Up-To-Date"] == "true"
    assert response.headers["Stream-Next-Offset"] == tail


def test_long_poll_wakes_when_the_stream_is_closed(
    server: ServerProcess, client: httpx.Client, stream_url: str
) -> None:
    tail = put(client, stream_url, b"data").headers["Stream-Next-Offset"]

    with long_poll_in_background(server.url + stream_url, tail) as responses:
        post(client, stream_url, content_type=None, headers=CLOSE)

    [response] = responses
    assert response.status_code == 204
    assert response.headers["Stream-Closed"] == "true"
    assert response.headers["Stream-Next-Offset"] == tail


# -- SSE -------------------------------------------------------------------------------------


def test_sse_sends_data_then_control_and_ends_when_closed(
    client: httpx.Client, stream_url: str
) -> None:
    put(client, stream_url, b"hello")
    params = {"offset": "-1", "live": "sse"}

    with client.stream("GET", stream_url, params=params, timeout=SSE_TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert "Content-Length" not in response.headers
        assert "no-cache" in response.headers["Cache-Control"]
        assert "Stream-SSE-Data-Encoding" not in response.headers
        events = sse_events(response)

        assert next(events) == Event("data", "hello")
        control = next(events)
        assert control.type == "control"
        assert control.json()["streamNextOffset"] == offsets.encode(1)
        assert control.json()["upToDate"] is True
        assert is_cursor(control.json()["streamCursor"])

        post(client, stream_url, b" world\nline two")
        assert next(events) == Event("data", " world\nline two")
        assert next(events).json()["streamNextOffset"] == offsets.encode(2)

        post(client, stream_url, b"bye", headers=CLOSE)
        assert next(events) == Event("data", "bye")
        last = next(events)
        assert last.type == "control"
        assert last.json() == {
            "streamNextOffset": offsets.encode(3),
            "streamClosed": True,
            "upToDate": True,
        }
        assert list(events) == []  # the response ends after streamClosed


def test_sse_from_now_starts_with_a_control_at_the_tail(
    client: httpx.Client, stream_url: str
) -> None:
    tail = put(client, stream_url, b"history").headers["Stream-Next-Offset"]
    params = {"offset": "now", "live": "sse"}

    with client.stream("GET", stream_url, params=params, timeout=SSE_TIMEOUT) as response:
        events = sse_events(response)
        first = next(events)
        post(client, stream_url, b"fresh")
        following = [next(events), next(events)]

    assert first.type == "control"
    assert (first.json()["streamNextOffset"], first.json()["upToDate"]) == (tail, True)
    assert following[0] == Event("data", "fresh")
    assert following[1].json()["streamNextOffset"] == offsets.encode(2)


def test_sse_of_a_json_stream_sends_arrays(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b'[{"n":1},{"n":2}]', content_type=JSON)
    post(client, stream_url, b'{"text":"line1\\nline2"}', content_type=JSON, headers=CLOSE)
    params = {"offset": "-1", "live": "sse"}

    with client.stream("GET", stream_url, params=params, timeout=SSE_TIMEOUT) as response:
        events = list(sse_events(response))

    data = [event.json() for event in events if event.type == "data"]
    assert [item for array in data for item in array] == [
        {"n": 1},
        {"n": 2},
        {"text": "line1\nline2"},
    ]
    assert events[-1].type == "control"
    assert events[-1].json()["streamClosed"] is True


def test_sse_of_a_binary_stream_is_base64(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url, b"Hello", content_type=BINARY, headers=CLOSE)
    params = {"offset": "-1", "live": "sse"}

    with client.stream("GET", stream_url, params=params, timeout=SSE_TIMEOUT) as response:
        encoding = response.headers.get("Stream-SSE-Data-Encoding")
        events = list(sse_events(response))

    assert encoding == "base64"
    assert events[0] == Event("data", "SGVsbG8=")
    assert [event.type for event in events] == ["data", "control"]


def test_sse_cannot_be_fooled_by_event_text_in_the_data(
    client: httpx.Client, stream_url: str
) -> None:
    """Line breaks of every kind in the data stay inside one data event."""
    payload = b'safe\r\n\r\nevent: control\r\ndata: {"injected":true}\r\rend\n\nevent: data'
    put(client, stream_url, payload, headers=CLOSE)
    params = {"offset": "-1", "live": "sse"}

    with client.stream("GET", stream_url, params=params, timeout=SSE_TIMEOUT) as response:
        events = list(sse_events(response))

    assert [event.type for event in events] == ["data", "control"]
    assert "injected" not in events[1].json()
    assert events[0].data == payload.decode().replace("\r\n", "\n").replace("\r", "\n")


# -- idempotent producers --------------------------------------------------------------------


def test_producer_append_is_200_and_its_retry_204(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)

    responses = [
        post(client, stream_url, f"m{n}".encode(), headers=producer("p", 0, n)) for n in range(3)
    ]
    retry = post(client, stream_url, b"m1", headers=producer("p", 0, 1))

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.headers["Producer-Seq"] for r in responses] == ["0", "1", "2"]
    assert all(r.headers["Producer-Epoch"] == "0" for r in responses)
    assert retry.status_code == 204
    assert (retry.headers["Producer-Epoch"], retry.headers["Producer-Seq"]) == ("0", "2")
    assert retry.headers["Stream-Next-Offset"] == responses[-1].headers["Stream-Next-Offset"]
    assert client.get(stream_url).content == b"m0m1m2"


def test_producer_with_a_stale_epoch_is_403(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)
    post(client, stream_url, b"a", headers=producer("p", 0, 0))
    post(client, stream_url, b"b", headers=producer("p", 1, 0))

    zombie = post(client, stream_url, b"zombie", headers=producer("p", 0, 1))

    assert zombie.status_code == 403
    assert zombie.headers["Producer-Epoch"] == "1"
    assert "fenced" in zombie.text
    assert client.get(stream_url).content == b"ab"


def test_producer_sequence_gap_is_409(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)
    post(client, stream_url, b"a", headers=producer("p", 0, 0))

    gap = post(client, stream_url, b"c", headers=producer("p", 0, 2))

    assert gap.status_code == 409
    assert gap.headers["Producer-Expected-Seq"] == "1"
    assert gap.headers["Producer-Received-Seq"] == "2"
    assert client.get(stream_url).content == b"a"


def test_producer_new_epoch_must_start_at_seq_zero(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)
    post(client, stream_url, b"a", headers=producer("p", 0, 0))

    bad = post(client, stream_url, b"b", headers=producer("p", 1, 5))
    good = post(client, stream_url, b"b", headers=producer("p", 1, 0))

    assert bad.status_code == 400
    assert "must start at Producer-Seq 0" in bad.text
    assert (good.status_code, good.headers["Producer-Epoch"]) == (200, "1")
    assert client.get(stream_url).content == b"ab"


def test_producer_closing_append_and_its_retry(client: httpx.Client, stream_url: str) -> None:
    put(client, stream_url)

    closing = post(client, stream_url, b"final", headers={**producer("p", 0, 0), **CLOSE})
    retry = post(client, stream_url, b"final", headers={**producer("p", 0, 0), **CLOSE})
    next_seq = post(client, stream_url, b"more", headers={**producer("p", 0, 1), **CLOSE})

    assert (closing.status_code, closing.headers["Stream-Closed"]) == (200, "true")
    assert (retry.status_code, retry.headers["Stream-Closed"]) == (204, "true")
    assert (next_seq.status_code, next_seq.headers["Stream-Closed"]) == (409, "true")
    assert client.get(stream_url).content == b"final"


# -- bad requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """A request that must be refused with ``status`` and a body containing ``says``."""

    method: str
    status: int
    says: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    params: list[tuple[str, str]] = field(default_factory=list)
    stream: str = "text"  # which stream it is sent to: "text", "json" or "closed"


def malformed_ttl(value: str) -> Rejected:
    return Rejected("PUT", 400, "Stream-TTL", headers={"Content-Type": TEXT, "Stream-TTL": value})


def bad_epoch(value: str) -> Rejected:
    return Rejected(
        "POST",
        400,
        "Producer-Epoch must be an integer",
        b"x",
        {"Content-Type": TEXT, "Producer-Id": "p", "Producer-Epoch": value, "Producer-Seq": "1"},
    )


REJECTED: dict[str, Rejected] = {
    "malformed-offset": Rejected("GET", 400, "invalid offset 'abc'", params=[("offset", "abc")]),
    "offset-with-newline": Rejected(
        "GET", 400, "invalid offset", params=[("offset", OFFSET_ZERO + "\n")]
    ),
    "offset-sub-position": Rejected(
        "GET", 400, "invalid offset", params=[("offset", "0000000000000000_0000000000000001")]
    ),
    "empty-offset": Rejected("GET", 400, "invalid offset", params=[("offset", "")]),
    "two-offsets": Rejected("GET", 400, "one offset", params=[("offset", "-1"), ("offset", "now")]),
    "offset-past-tail": Rejected(
        "GET", 400, "past the stream's tail", params=[("offset", offsets.encode(99))]
    ),
    "long-poll-without-offset": Rejected(
        "GET", 400, "needs an offset", params=[("live", "long-poll")]
    ),
    "sse-without-offset": Rejected("GET", 400, "needs an offset", params=[("live", "sse")]),
    "unknown-live-mode": Rejected(
        "GET", 400, "live must be", params=[("offset", "-1"), ("live", "websocket")]
    ),
    "empty-post": Rejected("POST", 400, "the body is empty", headers={"Content-Type": TEXT}),
    "empty-post-with-producer": Rejected(
        "POST", 400, "the body is empty", headers={"Content-Type": TEXT, **producer("p", 0, 1)}
    ),
    "missing-content-type": Rejected("POST", 400, "Content-Type is required", b"data"),
    "content-type-mismatch": Rejected("POST", 409, "does not match", b"{}", {"Content-Type": JSON}),
    "invalid-json": Rejected(
        "POST", 400, "not valid JSON", b"{ invalid json }", {"Content-Type": JSON}, stream="json"
    ),
    "nan-json": Rejected(
        "POST", 400, "not valid JSON", b"[1, NaN]", {"Content-Type": JSON}, stream="json"
    ),
    "trailing-garbage-json": Rejected(
        "POST", 400, "not valid JSON", b'{"a":1} x', {"Content-Type": JSON}, stream="json"
    ),
    "empty-json-array": Rejected(
        "POST", 400, "empty JSON array", b"[]", {"Content-Type": JSON}, stream="json"
    ),
    "invalid-json-on-put": Rejected(
        "PUT", 400, "not valid JSON", b"{oops", {"Content-Type": JSON}, stream="json"
    ),
    "ttl-word": malformed_ttl("abc"),
    "ttl-negative": malformed_ttl("-1"),
    "ttl-leading-zero": malformed_ttl("060"),
    "ttl-plus": malformed_ttl("+60"),
    "ttl-fraction": malformed_ttl("60.5"),
    "ttl-exponent": malformed_ttl("1e3"),
    "ttl-empty": malformed_ttl(""),
    "ttl-and-expires-at": Rejected(
        "PUT",
        400,
        "Stream-TTL or Stream-Expires-At, not both",
        headers={
            "Content-Type": TEXT,
            "Stream-TTL": "3600",
            "Stream-Expires-At": "2999-01-01T00:00:00Z",
        },
    ),
    "expires-at-not-a-time": Rejected(
        "PUT",
        400,
        "Stream-Expires-At must be an RFC 3339 time",
        headers={"Content-Type": TEXT, "Stream-Expires-At": "tomorrow"},
    ),
    "expires-at-impossible-date": Rejected(
        "PUT",
        400,
        "is not a valid time",
        headers={"Content-Type": TEXT, "Stream-Expires-At": "2030-02-30T00:00:00Z"},
    ),
    "put-other-content-type": Rejected(
        "PUT", 409, "different configuration", headers={"Content-Type": JSON}
    ),
    "fork-offset-without-source": Rejected(
        "PUT",
        400,
        "need Stream-Forked-From",
        headers={"Content-Type": TEXT, "Stream-Fork-Offset": OFFSET_ZERO},
    ),
    "only-producer-id": Rejected(
        "POST", 400, "together, or none", b"x", {"Content-Type": TEXT, "Producer-Id": "p"}
    ),
    "producer-without-seq": Rejected(
        "POST",
        400,
        "together, or none",
        b"x",
        {"Content-Type": TEXT, "Producer-Id": "p", "Producer-Epoch": "0"},
    ),
    "producer-without-id": Rejected(
        "POST",
        400,
        "together, or none",
        b"x",
        {"Content-Type": TEXT, "Producer-Epoch": "0", "Producer-Seq": "1"},
    ),
    "empty-producer-id": Rejected(
        "POST",
        400,
        "Producer-Id must not be empty",
        b"x",
        {"Content-Type": TEXT, **producer("", 0, 1)},
    ),
    "epoch-exponent": bad_epoch("1e3"),
    "epoch-negative": bad_epoch("-1"),
    "epoch-trailing-letters": bad_epoch("0xyz"),
    "epoch-above-2**53-1": bad_epoch(str(2**53)),
    "seq-not-integer": Rejected(
        "POST",
        400,
        "Producer-Seq must be an integer",
        b"x",
        {"Content-Type": TEXT, "Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "1abc"},
    ),
    "producer-gap": Rejected(
        "POST", 409, "skips ahead", b"x", {"Content-Type": TEXT, **producer("p", 0, 5)}
    ),
    "producer-new-epoch-nonzero-seq": Rejected(
        "POST",
        400,
        "must start at Producer-Seq 0",
        b"x",
        {"Content-Type": TEXT, **producer("p", 1, 3)},
    ),
    "stream-seq-regression": Rejected(
        "POST", 409, "Stream-Seq", b"x", {"Content-Type": TEXT, "Stream-Seq": "4"}
    ),
    "append-to-closed": Rejected(
        "POST", 409, "is closed", b"x", {"Content-Type": TEXT}, stream="closed"
    ),
    "append-and-close-to-closed": Rejected(
        "POST", 409, "is closed", b"x", {"Content-Type": TEXT, **CLOSE}, stream="closed"
    ),
}


def set_up(client: httpx.Client, url: str, kind: str) -> None:
    """A text stream with producer p at epoch 0 seq 0 and Stream-Seq 5, a JSON stream, or a
    closed text stream."""
    if kind == "json":
        assert put(client, url, b'[{"n":1}]', content_type=JSON).status_code == 201
    elif kind == "closed":
        assert put(client, url, b"final", headers=CLOSE).status_code == 201
    else:
        assert put(client, url, b"hello").status_code == 201
        headers = {**producer("p", 0, 0), "Stream-Seq": "5"}
        assert post(client, url, b" world", headers=headers).status_code == 200


@pytest.mark.parametrize("case", REJECTED)
def test_a_bad_request_says_what_is_wrong_and_changes_nothing(
    client: httpx.Client, stream_url: str, case: str
) -> None:
    rejected = REJECTED[case]
    set_up(client, stream_url, rejected.stream)
    before = observe(client, stream_url)

    response = client.request(
        rejected.method,
        stream_url,
        content=rejected.body,
        headers=rejected.headers,
        params=rejected.params,
    )

    assert response.status_code == rejected.status, response.text
    assert rejected.says in response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert observe(client, stream_url) == before
    if rejected.stream == "text":
        # Producer p's state did not move either: its next seq is still 1.
        accepted = post(client, stream_url, b"!", headers=producer("p", 0, 1))
        assert accepted.status_code == 200
        assert client.get(stream_url).content == b"hello world!"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Stream-TTL": "1000000000000"}, id="ttl-10**12"),
        pytest.param({"Stream-TTL": "100000000000000000000"}, id="ttl-10**20"),
        pytest.param({"Stream-Expires-At": "9999-12-31T23:59:59-01:00"}, id="expires-after-9999"),
        pytest.param(
            {"Stream-Expires-At": "0001-01-01T00:00:00+01:00"}, id="expires-before-year-1"
        ),
        pytest.param({"Stream-TTL": "3153600000"}, id="ttl-100-years"),
    ],
)
def test_extreme_expiry_values_never_cause_a_server_error(
    client: httpx.Client, stream_url: str, headers: dict[str, str]
) -> None:
    """Any syntactically valid TTL or expiry time is either refused (4xx) or works."""
    response = put(client, stream_url, headers=headers)

    assert response.status_code < 500
    if response.is_success:
        assert client.head(stream_url).status_code < 500
        assert client.get(stream_url).status_code < 500


# -- request size limit ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that accepts request bodies of at most LIMIT bytes."""
    server = start_server(
        tmp_path_factory.mktemp("small"), env={"RUNSTREAM_MAX_APPEND_BYTES": str(LIMIT)}
    )
    yield server
    server.stop()


@pytest.fixture
def small_client(small_server: ServerProcess) -> Iterator[httpx.Client]:
    with small_server.client() as client:
        yield client


def test_a_body_over_the_limit_is_413_and_changes_nothing(
    small_client: httpx.Client, stream_url: str
) -> None:
    put(small_client, stream_url, b"start")
    before = observe(small_client, stream_url)

    too_large = post(small_client, stream_url, b"x" * (LIMIT + 1))
    at_limit = post(small_client, stream_url, b"y" * LIMIT)

    assert too_large.status_code == 413
    assert f"larger than the limit of {LIMIT} bytes" in too_large.text
    assert at_limit.status_code == 204
    assert observe(small_client, stream_url).body == before.body + b"y" * LIMIT


def test_a_put_body_over_the_limit_is_413_and_creates_nothing(
    small_client: httpx.Client, stream_url: str
) -> None:
    response = put(small_client, stream_url, b"x" * (2 * LIMIT))

    assert response.status_code == 413
    assert "larger than the limit" in response.text
    assert small_client.head(stream_url).status_code == 404


def test_a_chunked_body_within_the_limit_is_stored_whole(
    small_client: httpx.Client, stream_url: str
) -> None:
    put(small_client, stream_url)
    body = bytes(range(100)) * 10

    response = small_client.post(
        stream_url, content=iter([body[:500], body[500:]]), headers={"Content-Type": TEXT}
    )

    assert response.status_code == 204
    assert small_client.get(stream_url).content == body


def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(
    small_client: httpx.Client, stream_url: str
) -> None:
    put(small_client, stream_url, b"start")
    before = observe(small_client, stream_url)
    chunks = [bytes([65 + n]) * 100 for n in range(20)]

    response = small_client.post(stream_url, content=iter(chunks), headers={"Content-Type": TEXT})

    assert response.status_code == 413
    assert observe(small_client, stream_url) == before
