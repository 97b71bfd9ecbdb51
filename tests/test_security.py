"""Security: the dashboard's session against other sites, auth disabled on loopback only, the
secret key out of addresses and long enough, tokens that live as long as asked, and asset
routes that answer odd paths with 404.

Most tests drive the app in-process through Flask's test client; those of websockets and of a
real server's client addresses start the server (`runstream serve`, or the documented gunicorn
command).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import AUTH, SECRET_KEY, ServerProcess, free_port, stop_process_group
from flask import Flask
from flask.testing import FlaskClient
from reactpy import html
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from runstream.server import create_app, runtime_of
from runstream.server.dashboard.pages import Shell
from runstream.server.runs.auth import Auth, load_or_create_secret_key

FOREIGN = "https://evil.example"
HANG_GUARD = 30.0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET_KEY})
    yield app
    runtime_of(app).close()


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A client of the app at http://localhost, as a browser on its pages would be."""
    return app.test_client()


def sign_in(client: FlaskClient, **headers: str) -> Any:
    return client.post(
        "/login", data={"secret_key": SECRET_KEY}, headers=headers, follow_redirects=False
    )


def session_cookie_header(response: Any) -> str:
    cookies = [v for v in response.headers.getlist("Set-Cookie") if v.startswith("session=")]
    assert len(cookies) == 1, response.headers
    return str(cookies[0])


# -- the session cookie --------------------------------------------------------------------------


def test_the_session_cookie_is_samesite_lax_httponly_and_secure_over_https_only(
    browser: FlaskClient,
) -> None:
    """Other sites' forms and scripts get no cookie sent (Lax), no script reads it, and it is
    sent over https only when the page came over https: over plain http (loopback) a Secure
    cookie would never come back."""
    over_http = session_cookie_header(sign_in(browser, Origin="http://localhost"))
    over_https = session_cookie_header(
        browser.post(
            "/login",
            data={"secret_key": SECRET_KEY},
            base_url="https://localhost",
            headers={"Origin": "https://localhost"},
        )
    )

    for cookie in (over_http, over_https):
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "samesite=lax" in attributes, cookie
        assert "httponly" in attributes, cookie
    assert "secure" not in [part.strip().lower() for part in over_http.split(";")]
    assert "secure" in [part.strip().lower() for part in over_https.split(";")]


def test_behind_a_local_proxy_saying_https_the_cookie_is_secure(server: ServerProcess) -> None:
    """gunicorn (`runstream serve`) believes X-Forwarded-Proto from a proxy on this machine."""
    response = httpx.post(
        f"{server.url}/login",
        data={"secret_key": SECRET_KEY},
        headers={"X-Forwarded-Proto": "https"},
        timeout=10,
    )
    assert response.status_code == 302, response.text
    assert "secure" in [part.strip().lower() for part in response.headers["set-cookie"].split(";")]


# -- cross-site requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": FOREIGN},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Sec-Fetch-Site": "cross-site", "Origin": FOREIGN},
        {"Sec-Fetch-Site": "same-site"},
        {"Referer": f"{FOREIGN}/page"},
    ],
)
def test_a_sign_in_from_another_site_is_refused(
    browser: FlaskClient, headers: dict[str, str]
) -> None:
    response = sign_in(browser, **headers)

    assert response.status_code == 403
    assert response.content_type.startswith("text/plain")
    assert "another site" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    assert browser.get("/runs").status_code == 302  # still signed out


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no browser: curl, a script
        {"Origin": "http://localhost"},
        {"Origin": "http://LOCALHOST:80"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
        {"Sec-Fetch-Site": "none"},
        {"Referer": "http://localhost/login?next=/runs"},
    ],
)
def test_a_sign_in_from_the_dashboards_own_page_is_accepted(
    browser: FlaskClient, headers: dict[str, str]
) -> None:
    response = sign_in(browser, **headers)

    assert response.status_code == 302
    assert response.headers["Location"] == "/runs"
    assert browser.get("/runs").status_code == 200


def test_sign_out_ends_the_session_and_only_from_the_dashboards_own_page(
    browser: FlaskClient, app: Flask
) -> None:
    assert sign_in(browser, Origin="http://localhost").status_code == 302
    assert browser.get("/runs").status_code == 200

    refused = browser.post("/logout", headers={"Origin": FOREIGN})
    assert refused.status_code == 403
    assert browser.get("/runs").status_code == 200  # another site cannot sign it out
    assert browser.get("/logout").status_code == 405  # a link cannot either

    signed_out = browser.post("/logout", headers={"Origin": "http://localhost"})
    assert signed_out.status_code == 302
    assert signed_out.headers["Location"] == "/login"
    assert "session=;" in signed_out.headers["Set-Cookie"]  # the cookie is deleted
    assert browser.get("/runs").status_code == 302

    with app.app_context():
        shell = Shell(html.p("content"))
    navigation = shell["children"][0]["children"][0]
    assert navigation["tagName"] == "nav"
    form = navigation["children"][-1]
    assert form["tagName"] == "form"
    assert form["attributes"]["method"] == "post" and form["attributes"]["action"] == "/logout"
    assert form["children"][0]["children"] == ["Sign out"]


def test_the_dashboards_websocket_refuses_another_sites_page(server: ServerProcess) -> None:
    """A page of another site may open a websocket to the dashboard, and the browser sends the
    session cookie with it: the handshake is refused (403) before anything of a run is sent."""
    with server.client() as client:
        triggered = client.post(
            "/api/v1/tasks/security.origin/trigger", json={"payload": {"secret": "payload-42"}}
        )
        assert triggered.status_code == 201, triggered.text
        run_id = triggered.json()["id"]
    signed_in = httpx.post(
        f"{server.url}/login", data={"secret_key": SECRET_KEY}, timeout=10
    ).headers["set-cookie"]
    cookie = {"Cookie": signed_in.split(";", 1)[0]}
    url = server.url.replace("http://", "ws://") + f"/_reactpy/stream/runs/{run_id}"

    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            url, origin=Origin(FOREIGN), additional_headers=cookie, open_timeout=HANG_GUARD
        ) as ws,
    ):
        ws.recv(timeout=5)  # today's server sends the run's page, payload and all
    assert refused.value.response.status_code == 403
    assert b"another site" in refused.value.response.body

    # The dashboard's own page (its origin is the server's) gets the run.
    own = connect(
        url, origin=Origin(server.url), additional_headers=cookie, open_timeout=HANG_GUARD
    )
    with own as ws:
        deadline = time.monotonic() + HANG_GUARD
        while "payload-42" not in (message := ws.recv(timeout=HANG_GUARD)):
            assert time.monotonic() < deadline, message
        assert json.loads(message)["type"] == "layout-update"


# -- authentication disabled: loopback clients only ------------------------------------------------


def test_with_auth_disabled_the_app_serves_no_remote_client(tmp_path: Path) -> None:
    """Whatever server runs the app: the check is the app's own, on every request."""
    app = create_app({"INSTANCE_PATH": str(tmp_path), "AUTH": "disabled"})
    try:
        remote = app.test_client()
        remote.environ_base["REMOTE_ADDR"] = "192.0.2.7"
        local = app.test_client()

        for path in ("/runs", "/runs/run_x", "/static/runstream.css", "/login", "/"):
            response = remote.get(path)
            assert response.status_code == 403, path
            assert "loopback clients only" in response.get_data(as_text=True)
            assert response.content_type.startswith("text/plain")
        api = remote.get("/api/v1/runs")
        assert api.status_code == 403 and "loopback" in api.get_json()["error"]
        assert local.get("/runs").status_code == 200
    finally:
        runtime_of(app).close()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_under_the_documented_gunicorn_command_auth_disabled_refuses_remote_clients(
    tmp_path: Path,
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no IPv4 address but loopback")
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1"),
            *("--bind", f"0.0.0.0:{port}", "runstream.server:create_app()"),
        ],
        env={**os.environ, "RUNSTREAM_INSTANCE_PATH": str(tmp_path), "RUNSTREAM_AUTH": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                local = httpx.get(f"http://127.0.0.1:{port}/runs", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.1)
        remote_page = httpx.get(f"http://{address}:{port}/runs", timeout=5)
        remote_stream = httpx.get(f"http://{address}:{port}/v1/stream/x?offset=-1", timeout=5)
    finally:
        stop_process_group(process)

    assert local.status_code == 200
    assert remote_page.status_code == 403
    assert "loopback clients only" in remote_page.text
    assert remote_stream.status_code == 403


# -- the secret key ------------------------------------------------------------------------------


def test_the_secret_key_in_the_address_is_refused_and_read_tokens_still_work(
    browser: FlaskClient, app: Flask
) -> None:
    """The key in ?token= would land in proxies' logs and browsers' histories: refused, even
    beside a good Authorization header, with what to do instead; public access tokens, which
    a browser's EventSource can send no other way, still read."""
    key = {"token": SECRET_KEY}
    create = browser.put("/v1/stream/security/key", query_string=key)
    append = browser.post(
        "/v1/stream/security/key",
        query_string=key,
        data=b'["x"]',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    trigger = browser.post("/api/v1/tasks/security.key/trigger", query_string=key, json={})
    read = browser.get("/api/v1/runs", query_string=key)

    for response in (create, append):
        assert response.status_code == 401
        assert response.content_type.startswith("text/plain")
        assert "Authorization: Bearer" in response.get_data(as_text=True)
    for response in (trigger, read):
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.get_json()["error"]

    triggered = browser.post("/api/v1/tasks/security.key/trigger", headers=AUTH, json={})
    assert triggered.status_code == 201
    run_id, token = triggered.get_json()["id"], triggered.get_json()["public_access_token"]
    by_token = browser.get(f"/api/v1/runs/{run_id}", query_string={"token": token})
    assert by_token.status_code == 200
    written = browser.put(
        f"/v1/stream/runs/{run_id}/k", query_string={"token": token}, content_type="text/plain"
    )
    assert written.status_code == 403  # a public access token still only reads


def test_the_secret_key_in_a_websockets_address_is_refused(server: ServerProcess) -> None:
    with server.client() as client:
        run_id = client.post("/api/v1/tasks/security.ws/trigger", json={}).json()["id"]
    url = server.url.replace("http://", "ws://")
    url += f"/realtime/v2/streams/{run_id}/k?timeout_in_seconds=2&token={SECRET_KEY}"

    with connect(url, open_timeout=HANG_GUARD) as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=HANG_GUARD)
    assert ws.close_code == 4401
    assert ws.close_reason is not None and "Authorization: Bearer" in ws.close_reason


def test_an_empty_secret_key_file_is_a_clear_error(tmp_path: Path) -> None:
    """Runstream writes its key file whole or not at all, so an empty one was emptied by
    someone: a new key in its place would be one no worker has, so the start stops, naming
    the file and what to do."""
    (tmp_path / "secret_key").write_text("\n")

    with pytest.raises(ValueError, match="is empty: delete it") as refused:
        create_app({"INSTANCE_PATH": str(tmp_path)})
    assert str(tmp_path / "secret_key") in str(refused.value)
    with pytest.raises(ValueError, match="is empty"):
        load_or_create_secret_key(str(tmp_path))


def test_the_key_file_is_made_once_and_whole(tmp_path: Path) -> None:
    key, path, created = load_or_create_secret_key(str(tmp_path / "instance"))
    again = load_or_create_secret_key(str(tmp_path / "instance"))

    assert created and key.startswith("rs_sk_") and len(key) >= 40
    assert again == (key, path, False)
    assert os.listdir(tmp_path / "instance") == ["secret_key"]  # no draft left behind
    assert (os.stat(path).st_mode & 0o777) == 0o600


@pytest.mark.parametrize("key", ["x", "rs_sk_x", "a" * 15])
def test_a_short_secret_key_stops_the_start_naming_the_setting(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=r"RUNSTREAM_SECRET_KEY is \d+ characters? long") as bad:
        create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": key})
    assert "at least 16 characters" in str(bad.value)

    (tmp_path / "secret_key").write_text(key + "\n")
    with pytest.raises(ValueError, match="at least 16 characters") as bad_file:
        create_app({"INSTANCE_PATH": str(tmp_path)})
    assert str(tmp_path / "secret_key") in str(bad_file.value)


def test_keys_of_16_characters_and_more_are_accepted(tmp_path: Path) -> None:
    for number, key in enumerate(["a" * 16, SECRET_KEY]):
        app = create_app({"INSTANCE_PATH": str(tmp_path / str(number)), "SECRET_KEY": key})
        runtime_of(app).close()


# -- token lifetimes -----------------------------------------------------------------------------


def test_a_token_lives_at_least_as_long_as_asked() -> None:
    """A JWT's expiry is a whole second. Rounded down, a one-second token made late in a
    second expired almost at once (the cause of test_an_expired_token_is_401's flakes)."""
    for _ in range(20):
        before = time.time()
        token = Auth(SECRET_KEY).create_public_token(["read:runs"], timedelta(seconds=1))
        claims = jwt.decode(token, options={"verify_signature": False})
        assert before + 1 <= claims["exp"] < time.time() + 2
        time.sleep(0.05)


# -- the asset routes ----------------------------------------------------------------------------

ODD_NAMES = [
    "missing.css",
    "../pyproject.toml",
    "..%2f..%2fapp%2f__init__.py",
    "%2e%2e/x.css",
    "a%00.css",
    "runstream.css%00",
    "x" * 300 + ".css",
    "x" * 3000 + ".css",
    "/".join(["a"] * 500) + ".css",
    "sub/",
    "sub/x.css",
    "runstream.css/",
    "runstream.css/x.css",
    ".",
    "..",
    "%ff.css",
    "__init__.py",
    "__pycache__/",
    "x/../runstream.css",
    "./runstream.css",
]


@pytest.mark.parametrize("base", ["/static/", "/_reactpy/assets/", "/_reactpy/modules/"])
@pytest.mark.parametrize("name", ODD_NAMES, ids=lambda name: name[:40])
def test_odd_paths_under_the_asset_routes_are_404(
    browser: FlaskClient, base: str, name: str
) -> None:
    response = browser.get(base + name)

    assert response.status_code == 404


def test_the_assets_themselves_are_served(browser: FlaskClient) -> None:
    for name in ("runstream.css", "runstream.js"):
        response = browser.get(f"/static/{name}")
        assert response.status_code == 200
        response.close()
