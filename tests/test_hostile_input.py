"""Hostile input: what a client sends is validated in one layer and refused in one way.

A refusal is a 4xx with a message (plain text on Durable Streams, JSON under /api/, a close code
and reason on websockets) and stores nothing; it is never a 500. Besides refusals: what a
hostile client could use to make one stream name two (aliases) or hold the server up (resource
abuse), and what the official clients need to interoperate (large byte appends, whole-stream
catch-up reads).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess
from flask.testing import FlaskClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from runstream import wire
from runstream.components.stream_view import chunk_text
from runstream.server import create_app
from runstream.server.core.json_messages import MAX_DEPTH
from runstream.server.core.store.rows import MAX_MESSAGES_PER_APPEND
from runstream.server.runtime import runtime_of

JSON = {"Content-Type": "application/json"}
HUGE = "9" * 5000  # int() of it raises ValueError: "Exceeds the limit (4300 digits)"
# Past a 64-bit database column, and short enough for any request line.
OVERFLOWING = "9" * 30
# int() takes Unicode digits: "\u0661" (ARABIC-INDIC DIGIT ONE) is 1 to it.
ARABIC_ONE = "\u0661"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[FlaskClient]:
    """The application in-process, for what gunicorn's request line limit (4094 bytes) keeps
    from the shared server, but another WSGI server would pass on."""
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET_KEY})
    with app.test_client() as client:
        yield client
    runtime_of(app).close()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def assert_refused(response: httpx.Response, status: int = 400, *, api: bool = False) -> None:
    assert response.status_code == status, response.text[:300]
    if api:
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]
    else:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text.strip()


def tail(client: httpx.Client, path: str) -> str:
    head = client.head(path)
    assert head.status_code == 200, head.text
    return head.headers["Stream-Next-Offset"]


# -- unhandled input becomes a 500 ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Stream-TTL": HUGE}, id="ttl-5000-digits"),
        pytest.param({"Stream-TTL": "\u0661\u0662\u0663".encode()}, id="ttl-unicode-digits"),
        pytest.param({"Stream-Expires-At": "9999-12-31T23:59:59-23:59"}, id="expiry-overflows"),
        pytest.param(
            {"Stream-Forked-From": "/v1/stream/tests/none", "Stream-Fork-Sub-Offset": HUGE},
            id="fork-sub-offset-5000-digits",
        ),
    ],
)
def test_numbers_in_create_headers_are_refused_not_a_500(
    client: httpx.Client, stream_url: str, headers: dict[str, str | bytes]
) -> None:
    assert_refused(client.put(stream_url, headers=headers))
    assert client.head(stream_url).status_code == 404  # nothing was created


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("Producer-Epoch", HUGE, id="epoch-5000-digits"),
        pytest.param("Producer-Seq", HUGE, id="seq-5000-digits"),
        pytest.param("Producer-Seq", ARABIC_ONE.encode(), id="seq-unicode-digit"),
        pytest.param("Producer-Epoch", str(2**64), id="epoch-past-2-to-the-64"),
    ],
)
def test_producer_numbers_are_refused_not_a_500(
    client: httpx.Client, stream_url: str, name: str, value: str | bytes
) -> None:
    assert client.put(stream_url, headers={"Content-Type": "text/plain"}).status_code == 201
    headers: dict[str, str | bytes] = {
        "Producer-Id": "p",
        "Producer-Epoch": "0",
        "Producer-Seq": "0",
    }
    headers[name] = value
    assert_refused(client.post(stream_url, content=b"x", headers=headers))
    assert tail(client, stream_url).startswith("0000000000000000_")


def test_an_echoed_cursor_of_any_length_is_no_500(app_client: FlaskClient) -> None:
    """A cursor is a hint for caches: a value that is not one of ours is ignored."""
    path = "/v1/stream/tests/cursor"
    headers = {**AUTH, "Content-Type": "text/plain"}
    assert app_client.put(path, headers=headers, data=b"a").status_code == 201
    query = {"offset": "-1", "live": "long-poll", "cursor": HUGE}
    response = app_client.get(path, query_string=query, headers=AUTH)
    assert response.status_code == 200, response.text[:300]
    assert response.data == b"a"
    assert len(response.headers["Stream-Cursor"]) < 20


@pytest.mark.parametrize(
    "limit", [HUGE, ARABIC_ONE, "0", "101"], ids=["5000-digits", "unicode-digit", "0", "101"]
)
def test_a_runs_page_limit_is_refused_with_json(app_client: FlaskClient, limit: str) -> None:
    response = app_client.get("/api/v1/runs", query_string={"limit": limit}, headers=AUTH)
    assert response.status_code == 400, response.text[:300]
    assert response.json is not None and "limit" in response.json["error"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(nested(100_000), id="nested-100000"),
        pytest.param(b"[" + nested(MAX_DEPTH + 1) + b"]", id="nested-past-the-limit"),
        pytest.param(b"[1e999]", id="overflows-to-infinity"),
        pytest.param(b'{"x": -1e400}', id="overflows-to-minus-infinity"),
        pytest.param(b"[NaN]", id="nan"),
        pytest.param(b'["\\ud800"]', id="lone-surrogate"),
        pytest.param(b'{"\\udfff": 1}', id="lone-surrogate-in-a-key"),
        pytest.param(HUGE.encode(), id="integer-of-5000-digits"),
    ],
)
def test_pathological_json_is_refused_and_stores_nothing(
    client: httpx.Client, stream_url: str, body: bytes
) -> None:
    assert client.put(stream_url, headers=JSON).status_code == 201
    before = tail(client, stream_url)

    assert_refused(client.post(stream_url, content=body, headers=JSON))
    assert_refused(client.put(stream_url + "-created", content=body, headers=JSON))

    assert tail(client, stream_url) == before
    assert client.head(stream_url + "-created").status_code == 404


def test_json_nested_up_to_the_limit_is_stored(client: httpx.Client, stream_url: str) -> None:
    assert client.put(stream_url, headers=JSON).status_code == 201
    message = nested(MAX_DEPTH)  # one message: a body that is an array is a batch of its values
    batch = b"[" + message + b"]"
    assert client.post(stream_url, content=batch, headers=JSON).status_code == 204
    assert client.get(stream_url, params={"offset": "-1"}).content == b"[" + message + b"]"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "POST",
            "/api/v1/tasks/hostile/trigger",
            b'{"payload": ' + nested(100_000) + b"}",
            id="trigger-nested-100000",
        ),
        pytest.param(
            "POST",
            "/api/v1/tasks/hostile/trigger",
            b'{"payload": "\\ud800"}',
            id="trigger-lone-surrogate",
        ),
        pytest.param(
            "POST",
            "/api/v1/runs/run_0123456789abcdef01234567/complete",
            b'{"worker_id": "w", "output": ' + nested(3000) + b"}",
            id="complete-nested-3000",
        ),
        pytest.param(
            "POST",
            "/api/v1/auth/public-tokens",
            b'{"scopes": ["read:runs"], "expiration": 1' + b"0" * 30 + b"}",
            id="token-expiration-overflows-timedelta",
        ),
        pytest.param(
            "POST",
            "/api/v1/auth/public-tokens",
            json.dumps({"scopes": ["read:runs"], "expiration": "9" * 30 + "d"}).encode(),
            id="token-expiration-days-overflow",
        ),
        pytest.param(
            "POST",
            "/api/v1/auth/public-tokens",
            json.dumps({"scopes": ["read:runs"], "expiration": HUGE + "s"}).encode(),
            id="token-expiration-5000-digits",
        ),
    ],
)
def test_the_runs_api_refuses_hostile_input_with_json(
    client: httpx.Client, method: str, path: str, body: bytes
) -> None:
    response = client.request(method, path, content=body or None, headers=JSON if body else {})
    assert_refused(response, api=True)


def test_the_runs_api_stored_no_run_for_a_refused_trigger(client: httpx.Client) -> None:
    task = f"hostile-{uuid.uuid4().hex[:8]}"
    body = b'{"payload": ' + nested(100_000) + b"}"
    assert_refused(client.post(f"/api/v1/tasks/{task}/trigger", content=body), api=True)
    assert client.get("/api/v1/runs", params={"task": task}).json()["data"] == []


# -- websockets ------------------------------------------------------------------------------


def ws_url(server: ServerProcess, path: str, **params: Any) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return server.url.replace("http://", "ws://") + path + query


def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            ws.recv(timeout=10)
    ws.close()
    return ws.close_code, ws.close_reason


def new_run(client: httpx.Client) -> str:
    response = client.post(f"/api/v1/tasks/hostile-{uuid.uuid4().hex[:8]}/trigger", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"start_index": OVERFLOWING}, id="start-index-past-a-64-bit-column"),
        pytest.param({"start_index": "\u0661\u0662\u0663"}, id="start-index-unicode-digits"),
        pytest.param({"timeout_in_seconds": OVERFLOWING}, id="timeout-overflowing"),
    ],
)
def test_a_reader_with_hostile_numbers_is_closed_4400(
    server: ServerProcess, client: httpx.Client, params: dict[str, str]
) -> None:
    run_id = new_run(client)
    url = ws_url(server, f"/realtime/v2/streams/{run_id}/default", **params)
    with connect(url, additional_headers=AUTH, proxy=None, open_timeout=10) as ws:
        code, reason = closed_with(ws)
    assert code == wire.CLOSE_INVALID, (code, reason)
    assert reason


@pytest.mark.parametrize(
    ("frame", "close_code"),
    [
        pytest.param(
            '{"type": "chunks", "seq": 1' + "0" * 30 + ', "chunks": ["a"]}',
            wire.CLOSE_INVALID,
            id="seq-past-a-64-bit-column",
        ),
        pytest.param(
            '{"type": "chunks", "seq": 0, "chunks": [' + "[" * 100_000 + "]" * 100_000 + "]}",
            wire.CLOSE_INVALID,
            id="chunk-nested-100000",
        ),
        pytest.param(
            '{"type": "chunks", "seq": 0, "chunks": [' + "[" * 980 + "]" * 980 + "]}",
            wire.CLOSE_INVALID,
            id="chunk-nested-980",
        ),
        pytest.param(
            '{"type": "chunks", "seq": 0, "chunks": ["\\ud800"]}',
            wire.CLOSE_INVALID,
            id="chunk-lone-surrogate",
        ),
        pytest.param(
            '{"type": "chunks", "seq": 0, "chunks": ['
            + ",".join(["0"] * (MAX_MESSAGES_PER_APPEND + 1))
            + "]}",
            wire.CLOSE_TOO_LARGE,
            id="more-chunks-than-an-append-may-carry",
        ),
    ],
)
def test_a_writer_frame_with_hostile_input_is_refused_and_stores_nothing(
    server: ServerProcess, client: httpx.Client, frame: str, close_code: int
) -> None:
    run_id = new_run(client)
    url = ws_url(server, f"/realtime/v2/streams/{run_id}/default/append")
    with connect(url, additional_headers=AUTH, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "writer_id": "w"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(frame)
        code, reason = closed_with(ws)
    assert code == close_code, (code, reason)
    assert reason
    assert tail(client, f"/v1/stream/runs/{run_id}/default").startswith("0000000000000000_")


# -- aliases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "invalid",
    [
        pytest.param("%FF", id="ff"),
        pytest.param("%FE", id="fe"),
        pytest.param("%C3", id="truncated-sequence"),
        pytest.param("%ED%A0%80", id="encoded-surrogate"),
    ],
)
def test_a_path_that_is_not_utf8_is_refused_not_aliased(
    client: httpx.Client, stream_url: str, invalid: str
) -> None:
    """Werkzeug replaces invalid UTF-8 with U+FFFD: ``a%FFb`` would name ``a%EF%BF%BDb``."""
    replaced = f"{stream_url}-a%EF%BF%BDb"
    assert_refused(client.put(f"{stream_url}-a{invalid}b", headers={"Content-Type": "text/plain"}))
    assert client.head(replaced).status_code == 404
    # The replacement character itself is a character like any other.
    assert client.put(replaced, headers={"Content-Type": "text/plain"}).status_code == 201
    assert client.head(f"{stream_url}-a{invalid}b").status_code == 400
    assert client.get(f"{stream_url}-a{invalid}b", params={"offset": "-1"}).status_code == 400


# -- resource abuse --------------------------------------------------------------------------


def test_an_append_of_more_messages_than_the_limit_is_refused(
    client: httpx.Client, stream_url: str
) -> None:
    assert client.put(stream_url, headers=JSON).status_code == 201
    too_many = b"[" + b",".join([b"1"] * (MAX_MESSAGES_PER_APPEND + 1)) + b"]"
    assert_refused(client.post(stream_url, content=too_many, headers=JSON), 413)
    assert_refused(client.put(stream_url + "-created", content=too_many, headers=JSON), 413)
    assert tail(client, stream_url).startswith("0000000000000000_")

    at_limit = b"[" + b",".join([b"1"] * MAX_MESSAGES_PER_APPEND) + b"]"
    assert client.post(stream_url, content=at_limit, headers=JSON).status_code == 204
    assert tail(client, stream_url) == f"{MAX_MESSAGES_PER_APPEND:016d}_{0:016d}"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 980, 5000])
def test_the_stream_view_shows_a_deeply_nested_chunk(depth: int) -> None:
    """Chunks stored before the depth limit existed must not break every render of the view."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    text = chunk_text({"deep": value})
    assert text == '{"deep":' + "[" * depth + '"leaf"' + "]" * depth + "}"


# -- interop with the official clients -------------------------------------------------------


def test_a_byte_append_is_limited_by_the_request_body_limit_not_the_message_limit(
    client: httpx.Client, stream_url: str
) -> None:
    """The official TypeScript client merges concurrent appends into one body."""
    body = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB
    assert client.put(stream_url, headers={"Content-Type": "application/octet-stream"}).is_success
    response = client.post(
        stream_url, content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 204, response.text[:300]
    read = client.get(stream_url, params={"offset": "-1"})
    assert read.content == body
    assert read.headers["Stream-Up-To-Date"] == "true"
    assert read.headers["Stream-Next-Offset"] == tail(client, stream_url)


def test_a_catch_up_read_answers_the_whole_stream_in_one_response(
    client: httpx.Client, stream_url: str
) -> None:
    """Both official clients end a non-live read after its first response, up to date or not:
    a 2.5 MB stream must not read back as its first megabyte."""
    assert client.put(stream_url, headers=JSON).status_code == 201
    messages = [{"index": index, "text": "x" * 1000} for index in range(2500)]
    for start in range(0, len(messages), 500):
        batch = json.dumps(messages[start : start + 500]).encode()
        assert client.post(stream_url, content=batch, headers=JSON).status_code == 204

    read = client.get(stream_url, params={"offset": "-1"})
    assert read.status_code == 200
    assert read.json() == messages
    assert read.headers["Stream-Up-To-Date"] == "true"
    assert read.headers["Stream-Next-Offset"] == tail(client, stream_url)
    assert int(read.headers["Content-Length"]) == len(read.content)

    # From an offset inside the stream, and from the tail; a cached answer still validates.
    middle = f"{2000:016d}_{0:016d}"
    rest = client.get(stream_url, params={"offset": middle})
    assert rest.json() == messages[2000:]
    again = client.get(
        stream_url, params={"offset": middle}, headers={"If-None-Match": rest.headers["ETag"]}
    )
    assert again.status_code == 304
    assert client.get(stream_url, params={"offset": "now"}).json() == []
