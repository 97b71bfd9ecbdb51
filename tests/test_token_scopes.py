"""Who may do what, against a real `runstream serve`: every kind of credential against every
protected action, through every face (the runs API, Durable Streams, websockets, the dashboard).

The ``trigger:tasks:<task_id>`` scope may trigger runs of that one task and nothing else: not
another task's, not a child run, and it reads nothing, not even the run it triggered (the
trigger's answer carries a token that reads that run).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from runstream import auth as sdk_auth
from runstream import configure
from runstream.errors import ApiError
from runstream.server.runs.auth import Auth

TASK = "scoped-task"  # the task the trigger token may trigger
OTHER_TASK = "other-task"  # the task another trigger token may trigger
UNNAMED_TASK = "unnamed-task"  # a task no token names
WORKER = "scopes-worker"
KEY = "k"
JSON = "application/json"
PLAIN_STREAM = "/v1/stream/scopes/plain"  # a Durable Streams stream of no run
# The websocket close codes of refusals, as the HTTP statuses they stand for.
CLOSE_STATUSES = {4401: 401, 4403: 403}


@dataclass(frozen=True)
class World:
    """The server, a run with one chunk in stream ``k`` that the read tokens name, and the
    credentials, by kind."""

    server: ServerProcess
    run_id: str
    credentials: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = start_server(Path(tmp_path_factory.mktemp("scopes")))
    try:
        with server.client() as client:
            run_id = client.post(f"/api/v1/tasks/{TASK}/trigger", json={}).json()["id"]
            client.put(f"/v1/stream/runs/{run_id}/{KEY}", headers={"Content-Type": JSON})
            client.post(f"/v1/stream/runs/{run_id}/{KEY}", json=["secret"])
            client.put(PLAIN_STREAM, headers={"Content-Type": JSON})

            def mint(*scopes: str) -> str:
                minted = client.post("/api/v1/auth/public-tokens", json={"scopes": list(scopes)})
                assert minted.status_code == 201, minted.text
                token: str = minted.json()["token"]
                return token

            credentials = {
                "secret key": SECRET_KEY,
                "read:runs": mint("read:runs"),
                "read:runs:<id>": mint(f"read:runs:{run_id}"),
                "trigger:tasks:<id>": mint(f"trigger:tasks:{TASK}"),
                "trigger:tasks:<other>": mint(f"trigger:tasks:{OTHER_TASK}"),
                "expired": expired_token(f"trigger:tasks:{TASK}", "read:runs"),
                "garbage": "not-a-credential",
            }
        yield World(server, run_id, credentials)
    finally:
        server.stop()


def expired_token(*scopes: str) -> str:
    """A token the server signed (with the key it derives from the secret key) that expired an
    hour ago, holding scopes that would otherwise be enough: the expiry is what refuses it."""
    key = Auth(SECRET_KEY).derive_key("public access tokens")
    issued = datetime.now(UTC) - timedelta(hours=2)
    claims = {
        "iss": "runstream",
        "iat": issued,
        "exp": issued + timedelta(hours=1),
        "scopes": list(scopes),
    }
    return jwt.encode(claims, key, algorithm="HS256")


# -- the actions: each returns the HTTP status it got (a websocket's close code as one) --------


def http(world: World, credential: str) -> httpx.Client:
    return httpx.Client(
        base_url=world.server.url, headers={"Authorization": f"Bearer {credential}"}, timeout=10
    )


def fresh_run(world: World, *, claimed: bool = False, stream: bool = False) -> str:
    """A run of its own task made with the secret key (claimed by a worker, with a stream
    ``k``, if asked), for an action that changes a run."""
    task = f"scopes-{uuid.uuid4().hex[:12]}"
    with world.server.client() as client:
        run_id: str = client.post(f"/api/v1/tasks/{task}/trigger", json={}).json()["id"]
        if stream:
            created = client.put(f"/v1/stream/runs/{run_id}/{KEY}", headers={"Content-Type": JSON})
            assert created.status_code == 201, created.text
        if claimed:
            claim = client.post(
                "/api/v1/runs/claim", json={"worker_id": WORKER, "task_ids": [task]}
            )
            assert [run["id"] for run in claim.json()["runs"]] == [run_id]
    return run_id


def trigger_own_task(world: World, credential: str) -> int:
    with http(world, credential) as client:
        return client.post(f"/api/v1/tasks/{TASK}/trigger", json={"payload": 1}).status_code


def trigger_another_task(world: World, credential: str) -> int:
    with http(world, credential) as client:
        return client.post(f"/api/v1/tasks/{UNNAMED_TASK}/trigger", json={}).status_code


def trigger_a_child_run(world: World, credential: str) -> int:
    with http(world, credential) as client:
        body = {"payload": 1, "parent_run_id": world.run_id}
        return client.post(f"/api/v1/tasks/{TASK}/trigger", json=body).status_code


def read_the_run(world: World, credential: str) -> int:
    with http(world, credential) as client:
        return client.get(f"/api/v1/runs/{world.run_id}").status_code


def wait_for_the_run(world: World, credential: str) -> int:
    with http(world, credential) as client:
        params = {"after": "not-its-updated-at", "wait": "5"}
        return client.get(f"/api/v1/runs/{world.run_id}", params=params).status_code


def list_runs(world: World, credential: str) -> int:
    with http(world, credential) as client:
        return client.get("/api/v1/runs").status_code


def read_the_stream_over_http(world: World, credential: str) -> int:
    with http(world, credential) as client:
        url = f"/v1/stream/runs/{world.run_id}/{KEY}"
        return client.get(url, params={"offset": "-1"}).status_code


def read_the_stream_over_a_websocket(world: World, credential: str) -> int:
    url = f"{ws_base(world)}/realtime/v2/streams/{world.run_id}/{KEY}?timeout_in_seconds=1"
    with websocket(url, credential) as ws:
        try:
            frame = json.loads(ws.recv(timeout=10))
        except ConnectionClosed:
            return CLOSE_STATUSES[ws.close_code or 0]
    assert frame == {"type": "chunks", "index": 0, "chunks": ["secret"]}
    return 200


def read_a_stream_of_no_run(world: World, credential: str) -> int:
    with http(world, credential) as client:
        return client.get(PLAIN_STREAM, params={"offset": "-1"}).status_code


def write_the_stream_over_http(world: World, credential: str) -> int:
    run_id = fresh_run(world, stream=True)
    with http(world, credential) as client:
        return client.post(f"/v1/stream/runs/{run_id}/{KEY}", json=["written"]).status_code


def write_the_stream_over_a_websocket(world: World, credential: str) -> int:
    run_id = fresh_run(world)
    url = f"{ws_base(world)}/realtime/v2/streams/{run_id}/{KEY}/append"
    with websocket(url, credential) as ws:
        try:
            ws.send(json.dumps({"type": "hello", "writer_id": "scopes"}))
            frame = json.loads(ws.recv(timeout=10))
        except ConnectionClosed:
            return CLOSE_STATUSES[ws.close_code or 0]
    assert frame["type"] == "ready", frame
    return 200


def claim_runs(world: World, credential: str) -> int:
    with http(world, credential) as client:
        body = {"worker_id": WORKER, "task_ids": [UNNAMED_TASK]}
        return client.post("/api/v1/runs/claim", json=body).status_code


def send_a_heartbeat(world: World, credential: str) -> int:
    run_id = fresh_run(world, claimed=True)
    with http(world, credential) as client:
        body = {"worker_id": WORKER}
        return client.post(f"/api/v1/runs/{run_id}/heartbeat", json=body).status_code


def complete_a_run(world: World, credential: str) -> int:
    run_id = fresh_run(world, claimed=True)
    with http(world, credential) as client:
        body = {"worker_id": WORKER, "output": "forged"}
        return client.post(f"/api/v1/runs/{run_id}/complete", json=body).status_code


def fail_a_run(world: World, credential: str) -> int:
    run_id = fresh_run(world, claimed=True)
    with http(world, credential) as client:
        body = {"worker_id": WORKER, "error": {"message": "forged"}}
        return client.post(f"/api/v1/runs/{run_id}/fail", json=body).status_code


def cancel_a_run(world: World, credential: str) -> int:
    run_id = fresh_run(world)
    with http(world, credential) as client:
        return client.post(f"/api/v1/runs/{run_id}/cancel").status_code


def mint_a_token(world: World, credential: str) -> int:
    with http(world, credential) as client:
        body = {"scopes": [f"trigger:tasks:{TASK}"]}
        return client.post("/api/v1/auth/public-tokens", json=body).status_code


def sign_in_to_the_dashboard(world: World, credential: str) -> int:
    """The dashboard's one credential is the secret key, typed into its sign-in form."""
    with httpx.Client(base_url=world.server.url, timeout=10) as client:
        return client.post("/login", data={"secret_key": credential}).status_code


def open_the_dashboard_with_it_as_bearer(world: World, credential: str) -> int:
    """The dashboard takes no bearer credential, not even the secret key: every one is sent
    to its sign-in (302 to /login)."""
    with http(world, credential) as client:
        page = client.get("/runs")
    assert page.status_code != 302 or page.headers["location"].startswith("/login"), page
    return page.status_code


def ws_base(world: World) -> str:
    return world.server.url.replace("http://", "ws://")


def websocket(url: str, credential: str) -> ClientConnection:
    """A websocket sending ``credential`` as its bearer (the server refuses it by closing)."""
    headers = {"Authorization": f"Bearer {credential}"}
    return connect(url, additional_headers=headers, proxy=None, open_timeout=10)


Action = Callable[[World, str], int]
CREDENTIALS = [
    "secret key",
    "read:runs",
    "read:runs:<id>",
    "trigger:tasks:<id>",
    "trigger:tasks:<other>",
    "expired",
    "garbage",
]
# What each action answers each credential, in the order of CREDENTIALS. An expired or
# garbage credential is 401 everywhere; the dashboard's sign-in answers 302 (signed in) or 401.
OK, REFUSED, NOBODY = 200, 403, 401
MATRIX: dict[Action, tuple[int, ...]] = {
    trigger_own_task: (201, REFUSED, REFUSED, 201, REFUSED, NOBODY, NOBODY),
    trigger_another_task: (201, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    trigger_a_child_run: (201, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    read_the_run: (OK, OK, OK, REFUSED, REFUSED, NOBODY, NOBODY),
    wait_for_the_run: (OK, OK, OK, REFUSED, REFUSED, NOBODY, NOBODY),
    list_runs: (OK, OK, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    read_the_stream_over_http: (OK, OK, OK, REFUSED, REFUSED, NOBODY, NOBODY),
    read_the_stream_over_a_websocket: (OK, OK, OK, REFUSED, REFUSED, NOBODY, NOBODY),
    read_a_stream_of_no_run: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    write_the_stream_over_http: (204, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    write_the_stream_over_a_websocket: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    claim_runs: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    send_a_heartbeat: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    complete_a_run: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    fail_a_run: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    cancel_a_run: (OK, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    mint_a_token: (201, REFUSED, REFUSED, REFUSED, REFUSED, NOBODY, NOBODY),
    sign_in_to_the_dashboard: (302, 401, 401, 401, 401, 401, 401),
    open_the_dashboard_with_it_as_bearer: (302, 302, 302, 302, 302, 302, 302),
}
CASES = [
    pytest.param(action, credential, expected, id=f"{action.__name__}-{credential}")
    for action, row in MATRIX.items()
    for credential, expected in zip(CREDENTIALS, row, strict=True)
]


@pytest.mark.parametrize(("action", "credential", "expected"), CASES)
def test_each_credential_may_do_exactly_what_its_scopes_grant(
    world: World, action: Action, credential: str, expected: int
) -> None:
    assert action(world, world.credentials[credential]) == expected


# -- what the refusals say, and the trigger token's answer -----------------------------------


def test_a_refusal_names_the_scope_that_would_be_needed(world: World) -> None:
    trigger_token = world.credentials["trigger:tasks:<id>"]
    with http(world, trigger_token) as client:
        other = client.post(f"/api/v1/tasks/{UNNAMED_TASK}/trigger", json={})
        reading = client.get(f"/api/v1/runs/{world.run_id}")
        listing = client.get("/api/v1/runs")
        claim = client.post("/api/v1/runs/claim", json={"worker_id": "w", "task_ids": [TASK]})
        child = client.post(f"/api/v1/tasks/{TASK}/trigger", json={"parent_run_id": world.run_id})
    assert other.json()["error"] == (
        f"triggering task {UNNAMED_TASK} needs the secret key or a token with "
        f"trigger:tasks:{UNNAMED_TASK}"
    )
    assert f"read:runs:{world.run_id}" in reading.json()["error"]
    assert "read:runs" in listing.json()["error"]
    assert "claiming runs needs the secret key" in claim.json()["error"]
    assert "parent_run_id" in child.json()["error"] and "secret key" in child.json()["error"]


def test_the_trigger_answers_a_token_that_reads_the_new_run_only(world: World) -> None:
    """A trigger token triggers; the answer's token reads that run (and its streams), while
    the trigger token itself still reads nothing."""
    trigger_token = world.credentials["trigger:tasks:<id>"]
    with http(world, trigger_token) as client:
        triggered = client.post(f"/api/v1/tasks/{TASK}/trigger", json={"payload": {"n": 7}})
        assert triggered.status_code == 201
        run_id = triggered.json()["id"]
        assert client.get(f"/api/v1/runs/{run_id}").status_code == 403
    with http(world, triggered.json()["public_access_token"]) as client:
        run = client.get(f"/api/v1/runs/{run_id}")
        other_run = client.get(f"/api/v1/runs/{world.run_id}")
    assert run.status_code == 200
    assert (run.json()["task_id"], run.json()["payload"]) == (TASK, {"n": 7})
    assert other_run.status_code == 403


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("trigger:tasks:", "names no valid task"),
        ("trigger:tasks:-starts-with-a-dash", "names no valid task"),
        ("trigger:tasks:has space", "names no valid task"),
        ("trigger:task:summarize", "unknown scope"),
        ("trigger:tasks", "unknown scope"),
    ],
)
def test_a_trigger_scope_with_a_bad_task_id_is_refused(
    world: World, scope: str, message: str
) -> None:
    with world.server.client() as client:
        minted = client.post("/api/v1/auth/public-tokens", json={"scopes": [scope]})
    assert minted.status_code == 400
    assert message in minted.json()["error"]


def test_the_sdk_mints_trigger_tokens(world: World) -> None:
    """``auth.create_public_token(trigger_tasks=[...])``: a token that triggers that task and
    reads nothing unless ``read_runs`` says so."""
    configure(api_url=world.server.url, secret_key=SECRET_KEY)
    try:
        trigger_only = sdk_auth.create_public_token(trigger_tasks=[TASK], expiration="5m")
        both = sdk_auth.create_public_token(
            trigger_tasks=[TASK], read_runs=[world.run_id], expiration=300
        )
        with pytest.raises(ApiError) as refused:
            sdk_auth.create_public_token(trigger_tasks=["bad id"])
        with pytest.raises(ValueError, match="trigger_tasks must be a list"):
            sdk_auth.create_public_token(trigger_tasks=TASK)
        with pytest.raises(ValueError, match="needs read_runs"):
            sdk_auth.create_public_token(read_runs=False)
    finally:
        configure()
    assert refused.value.status == 400
    assert trigger_own_task(world, trigger_only) == 201
    assert read_the_run(world, trigger_only) == 403
    assert trigger_own_task(world, both) == 201
    assert read_the_run(world, both) == 200
    with httpx.Client(base_url=world.server.url, headers=AUTH, timeout=10) as client:
        assert client.get(f"/api/v1/runs/{world.run_id}").status_code == 200
