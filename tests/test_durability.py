"""Crash tests: what a client was told is stored survives a SIGKILL of the server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, start_server

JSON = "application/json"
URL = "/v1/stream/jobs/crash-test"
Launch = Callable[[], ServerProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start `runstream serve` on this test's instance folder; every server is stopped after."""
    started: list[ServerProcess] = []

    def launch() -> ServerProcess:
        server = start_server(tmp_path)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


def read_everything(client: httpx.Client) -> tuple[list[Any], str]:
    """All messages of the JSON stream at URL, following Stream-Next-Offset page by page."""
    messages: list[Any] = []
    offset = "-1"
    while True:
        response = client.get(URL, params={"offset": offset})
        assert response.status_code == 200
        messages.extend(response.json())
        offset = response.headers["Stream-Next-Offset"]
        if response.headers.get("Stream-Up-To-Date") == "true":
            return messages, offset


def producer(seq: int) -> dict[str, str]:
    return {"Producer-Id": "job-7", "Producer-Epoch": "0", "Producer-Seq": str(seq)}


def test_acknowledged_appends_survive_a_crash(launch: Launch) -> None:
    """200 appends, SIGKILL right after the last 2xx, restart: each is there once, in order."""
    server = launch()
    acknowledged: list[str] = []
    with server.client() as client:
        assert client.put(URL, headers={"Content-Type": JSON}).status_code == 201
        for n in range(200):
            body = json.dumps({"n": n}).encode()
            response = client.post(URL, content=body, headers={"Content-Type": JSON})
            assert response.status_code == 204
            acknowledged.append(response.headers["Stream-Next-Offset"])
        server.kill()

    restarted = launch()
    with restarted.client() as client:
        messages, tail = read_everything(client)
        assert messages == [{"n": n} for n in range(200)]
        assert tail == acknowledged[-1]
        for n in (0, 57, 198, 199):
            # Every acknowledged offset still resumes right after its message.
            after = client.get(URL, params={"offset": acknowledged[n]}).json()
            assert after == [{"n": m} for m in range(n + 1, 200)]
        appended = client.post(URL, content=b'{"n": 200}', headers={"Content-Type": JSON})
        assert appended.status_code == 204
        assert appended.headers["Stream-Next-Offset"] > tail


def test_a_producer_retry_after_a_crash_is_a_duplicate(launch: Launch) -> None:
    """The producer's last request, retried after a crash, is a 204 duplicate: stored once."""
    server = launch()
    with server.client() as client:
        assert client.put(URL, headers={"Content-Type": JSON}).status_code == 201
        for seq in range(100):
            body = json.dumps({"seq": seq}).encode()
            response = client.post(
                URL, content=body, headers={"Content-Type": JSON, **producer(seq)}
            )
            assert response.status_code == 200
        last_offset = response.headers["Stream-Next-Offset"]
        server.kill()

    restarted = launch()
    with restarted.client() as client:
        retry = client.post(
            URL, content=b'{"seq": 99}', headers={"Content-Type": JSON, **producer(99)}
        )
        older_retry = client.post(
            URL, content=b'{"seq": 42}', headers={"Content-Type": JSON, **producer(42)}
        )
        messages, tail = read_everything(client)
        following = client.post(
            URL, content=b'{"seq": 100}', headers={"Content-Type": JSON, **producer(100)}
        )

    assert retry.status_code == 204
    assert (retry.headers["Producer-Epoch"], retry.headers["Producer-Seq"]) == ("0", "99")
    assert retry.headers["Stream-Next-Offset"] == last_offset
    assert (older_retry.status_code, older_retry.headers["Producer-Seq"]) == (204, "99")
    assert messages == [{"seq": seq} for seq in range(100)]
    assert tail == last_offset
    assert following.status_code == 200


def test_closing_survives_a_crash(launch: Launch) -> None:
    """A stream closed by a producer's final append is still closed after a crash, and the
    producer's retry of that final append is still recognised."""
    server = launch()
    final = {"Content-Type": JSON, "Stream-Closed": "true", **producer(1)}
    with server.client() as client:
        assert client.put(URL, headers={"Content-Type": JSON}).status_code == 201
        first = client.post(URL, content=b'"first"', headers={"Content-Type": JSON, **producer(0)})
        assert first.status_code == 200
        assert client.post(URL, content=b'"last"', headers=final).status_code == 200
        server.kill()

    restarted = launch()
    with restarted.client() as client:
        head = client.head(URL)
        retry = client.post(URL, content=b'"last"', headers=final)
        refused = client.post(URL, content=b'"more"', headers={"Content-Type": JSON})
        messages, _ = read_everything(client)

    assert head.headers["Stream-Closed"] == "true"
    assert (retry.status_code, retry.headers["Stream-Closed"]) == (204, "true")
    assert (refused.status_code, refused.headers["Stream-Closed"]) == (409, "true")
    assert messages == ["first", "last"]
