"""Errors by meaning: the core raises what went wrong, each face answers it in its own terms
through one table, and every answer under /api/ is JSON, whatever failed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from conftest import ServerProcess, within
from sqlalchemy.exc import TimeoutError as PoolTimeout

from runstream import wire
from runstream.identifiers import InvalidIdentifier
from runstream.server import create_app
from runstream.server.core import errors
from runstream.server.faces.errors import REFUSALS, answer_for, protocol_headers
from runstream.server.runtime import runtime_of

T = TypeVar("T")


def every_core_error() -> list[type[Exception]]:
    """Every class below the core's base error (which is never raised itself)."""
    found: list[type[Exception]] = []
    pending: list[type[Exception]] = list(errors.RunstreamError.__subclasses__())
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return [*found, InvalidIdentifier]


@pytest.mark.parametrize("kind", every_core_error(), ids=lambda kind: kind.__name__)
def test_every_refusal_of_the_core_has_an_http_status_and_a_close_code(
    kind: type[Exception],
) -> None:
    arguments = {
        errors.StreamClosed: {"next_position": 3},
        errors.ProducerFenced: {"current_epoch": 2},
        errors.SequenceGap: {"expected": 1, "received": 4},
    }.get(kind, {})
    error = kind("what went wrong", **arguments)

    answer = answer_for(error)

    assert isinstance(error, REFUSALS)
    if issubclass(kind, errors.Busy):  # nothing wrong with the request: retry shortly
        assert (answer.status, answer.close_code) == (503, wire.CLOSE_TRY_AGAIN_LATER)
        assert not wire.is_refusal(answer.close_code)
        return
    assert 400 <= answer.status < 500
    assert answer.close_code == 4000 + answer.status  # one number means one thing everywhere
    # A timeout can go better next time; every other refusal would be refused again.
    assert wire.is_refusal(answer.close_code) is (kind is not errors.TimedOut)


def test_protocol_details_travel_as_durable_streams_headers() -> None:
    assert protocol_headers(errors.SequenceGap("gap", expected=1, received=4)) == {
        "Producer-Expected-Seq": "1",
        "Producer-Received-Seq": "4",
    }
    assert protocol_headers(errors.ProducerFenced("zombie", current_epoch=2)) == {
        "Producer-Epoch": "2"
    }
    closed = protocol_headers(errors.StreamClosed("closed", next_position=3))
    assert closed["Stream-Closed"] == "true"
    assert closed["Stream-Next-Offset"].startswith("0000000000000003_")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/runs?limit=%C2%B2", 400),  # a Unicode digit where ASCII digits belong
        ("GET", "/api/v1/no-such-thing", 404),
        ("DELETE", "/api/v1/runs", 405),
        ("GET", "/api/v1/runs/not-a-run", 400),
        ("GET", "/api/v1/runs/run_doesnotexist", 404),
    ],
)
def test_every_error_under_api_is_json_saying_what_is_wrong(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    response = client.request(method, path)

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]


def test_a_failure_of_the_server_under_api_is_a_json_500(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789"})

    def broken() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/api/v1/broken", view_func=broken)
    app.add_url_rule("/elsewhere/broken", endpoint="elsewhere", view_func=broken)

    response = app.test_client().get("/api/v1/broken")
    elsewhere = app.test_client().get("/elsewhere/broken")

    assert response.status_code == 500
    assert response.get_json() == {"error": response.get_json()["error"]}
    assert "a bug" not in response.get_data(as_text=True)  # no internals leak
    assert elsewhere.status_code == 500
    assert not elsewhere.is_json


def test_a_request_that_finds_every_database_connection_in_use_is_a_503_not_a_hang(
    tmp_path: Path,
) -> None:
    """With the pool's one connection held elsewhere, a read and an API call are refused after
    the pool's timeout, 503 with Retry-After and words that say why, instead of waiting."""
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "rs_sk_0123456789",
            "DATABASE_POOL_CONNECTIONS": 1,
            "DATABASE_POOL_TIMEOUT": 0.2,
        }
    )
    client = app.test_client()
    headers = {"Authorization": "Bearer rs_sk_0123456789"}
    assert client.put("/v1/stream/busy", headers=headers).status_code == 201

    # The housekeeping thread, started by the first request, may be using the connection a
    # moment: take it once it is free.
    held = within(5, lambda: retried(runtime_of(app).engine.connect))
    with held:  # the only connection
        read = client.get("/v1/stream/busy?offset=-1", headers=headers)
        listed = client.get("/api/v1/runs", headers=headers)

    for response in (read, listed):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert "every connection to the database is in use" in response.get_data(as_text=True)
    assert listed.get_json()["error"]
    assert client.get("/v1/stream/busy?offset=-1", headers=headers).status_code == 200


def retried(connect: Callable[[], T]) -> T:
    while True:
        try:
            return connect()
        except PoolTimeout:
            continue


def test_durable_streams_errors_stay_plain_text(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = client.get("/v1/stream/tests/no-such-stream-for-errors")

    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "does not exist" in response.text
