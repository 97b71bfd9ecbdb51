"""``runstream.components.mount`` in a user's own Flask app, over real sockets.

A small app of the user's, written to a folder of its own, is served by gunicorn as a user
would serve it: with the threaded worker (``-k gthread``) and with gevent's (``-k gevent``).
Raw websocket clients speak ReactPy's protocol to it: each page view gets the page's HTML,
opens the view's websocket, reads the first layout update and closes, as a browser does. The
gunicorn worker's threads are counted from /proc before and after.

Two behaviours need to see inside the server, so they run an app in this process, served by
Werkzeug's threaded server (what ``flask run`` serves with): the ``allowed`` guard, and a view
whose browser stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, stop_process_group
from flask import Flask, request
from reactpy import component, html, use_effect, use_state
from reactpy.core.types import VdomDict
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from werkzeug.serving import make_server

from runstream.components import mount
from runstream.components.serving import CLOSE_FELL_BEHIND, OUTBOX_LIMIT, WholeRenders

# Only against hangs: nothing here is expected to come near it.
HANG_GUARD = 30.0
PAGE_VIEWS = 50
VIEWS_AT_ONCE = 100
GTHREAD_THREADS = 4

# The user's app: a page at / and under it, whose text says where it is, with a child
# component (its hooks render inside the root's) and a button that counts its clicks.
USER_APP = """
from flask import Flask
from reactpy import component, html, use_location, use_state

from runstream.components import mount

app = Flask(__name__)


@app.get("/health")
def health():
    return "ok"


@component
def Where():
    location = use_location()
    return html.p(f"Hello from {location.pathname}{location.search}")


@component
def Root():
    clicks, set_clicks = use_state(0)
    return html.main(
        Where(),
        html.button({"on_click": lambda _event: set_clicks(clicks + 1)}, f"{clicks} clicks"),
    )


mount(app, "/", Root)
"""


# -- the user's app under gunicorn ---------------------------------------------------------------


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def worker_pid(self) -> int:
        """gunicorn's single worker: its arbiter's only child."""
        arbiter = self.process.pid
        children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])


@contextlib.contextmanager
def serving_the_users_app(
    folder: Path, worker: list[str], app_text: str = USER_APP
) -> Iterator[Served]:
    """The user's app.py, served from its folder by gunicorn with these worker options."""
    (folder / "app.py").write_text(app_text)
    port = free_port()
    log = folder / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *worker, "--bind", f"127.0.0.1:{port}", "app:app"],
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + HANG_GUARD
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{log.read_text()}"
            try:
                httpx.get(f"{served.url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"gunicorn did not answer:\n{log.read_text()}"
                time.sleep(0.05)
        yield served
    finally:
        stop_process_group(process)
    assert "Traceback" not in log.read_text(), log.read_text()


def worker_options(worker_class: str, threads: int) -> list[str]:
    if worker_class == "gthread":
        return ["-k", "gthread", "--threads", str(threads)]
    return ["-k", worker_class]


@pytest.fixture(params=["gthread", "gevent"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """The user's app under gunicorn; threaded, with a small pool of GTHREAD_THREADS."""
    with serving_the_users_app(tmp_path, worker_options(request.param, GTHREAD_THREADS)) as app:
        yield app


@pytest.fixture(params=["gthread", "gevent"])
def served_wide(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """The user's app under gunicorn; threaded, with a thread for each of VIEWS_AT_ONCE."""
    options = worker_options(request.param, VIEWS_AT_ONCE + GTHREAD_THREADS)
    with serving_the_users_app(tmp_path, options) as app:
        yield app


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def first_update(view: ClientConnection) -> dict[str, Any]:
    """The next message of the view: a layout update."""
    message = json.loads(view.recv(timeout=HANG_GUARD))
    assert message["type"] == "layout-update", message
    return dict(message)


def texts(model: dict[str, Any]) -> list[str]:
    """The texts of a layout update's model, in order."""
    found: list[str] = []
    for child in model.get("children", []):
        found += texts(child) if isinstance(child, dict) else [child]
    return found


def element(model: dict[str, Any], tag: str) -> dict[str, Any]:
    """The first element of the model with this tag."""
    if model.get("tagName") == tag:
        return model
    for child in model.get("children", []):
        if isinstance(child, dict):
            with contextlib.suppress(LookupError):
                return element(child, tag)
    raise LookupError(tag)


def page_view(served: Served, path: str) -> list[str]:
    """What a browser does to show ``path``: the page, its script, then its view's first
    update; the texts the update shows."""
    page = httpx.get(served.url + path, timeout=HANG_GUARD)
    assert page.status_code == 200 and '<div id="app">' in page.text, page.text
    script = page.text.split('src="', 1)[1].split('"', 1)[0]
    assert httpx.get(served.url + script, timeout=HANG_GUARD).status_code == 200, script
    with connect(f"{served.ws_url}/_reactpy/stream{path}", open_timeout=HANG_GUARD) as view:
        return texts(first_update(view)["model"])


def test_page_views_render_and_leave_no_thread_behind(served: Served) -> None:
    """50 page views, one after another, each show their page's text; afterwards the server
    runs no more threads than before them (gthread's pool aside, which is capped)."""
    pid = served.worker_pid()
    page_view(served, "/warm-up")  # starts the event loop the views share
    before = thread_count(pid)
    for number in range(PAGE_VIEWS):
        shown = page_view(served, f"/pages/{number}?n={number}")
        assert f"Hello from /pages/{number}?n={number}" in shown, shown
    # A view's threads end once its socket has closed: wait for that, but only so long.
    deadline = time.monotonic() + 10
    while thread_count(pid) > before + GTHREAD_THREADS and time.monotonic() < deadline:
        time.sleep(0.05)
    after = thread_count(pid)
    print(f"gunicorn worker threads: {before} before {PAGE_VIEWS} page views, {after} after")
    assert after <= before + GTHREAD_THREADS, (before, after)


def test_views_open_at_once_each_show_their_own_page(served_wide: Served) -> None:
    """100 views open at the same time on one event loop each render their own page: no view
    is shown another's address, or fails to render."""
    with contextlib.ExitStack() as stack:
        views = [
            stack.enter_context(
                connect(f"{served_wide.ws_url}/_reactpy/stream/at-once/{number}", max_queue=None)
            )
            for number in range(VIEWS_AT_ONCE)
        ]
        for number, view in enumerate(views):
            shown = texts(first_update(view)["model"])
            assert f"Hello from /at-once/{number}" in shown, (number, shown)


def test_a_click_reaches_its_view_and_the_page_updates(served: Served) -> None:
    """A click (ReactPy's layout-event) reaches the view's handler; the update comes back."""
    with connect(f"{served.ws_url}/_reactpy/stream/clicks", open_timeout=HANG_GUARD) as view:
        first = first_update(view)
        assert "0 clicks" in texts(first["model"])
        target = element(first["model"], "button")["eventHandlers"]["on_click"]["target"]
        for clicks in (1, 2):
            view.send(json.dumps({"type": "layout-event", "target": target, "data": [{}]}))
            assert f"{clicks} clicks" in texts(first_update(view)["model"])


def test_a_worker_forked_from_a_process_that_ran_the_loop_serves_views(tmp_path: Path) -> None:
    """With ``--preload`` gunicorn imports the app before it forks its worker: an app that
    used the event loop at import (a blocking SDK call, say) leaves the loop's object, not its
    thread, to the worker, which then runs a loop of its own."""
    app_text = USER_APP + "\nprocess_loop()  # as runstream.sync would, at import\n"
    app_text = app_text.replace(
        "from runstream.components import mount",
        "from runstream.components import mount\nfrom runstream.event_loop import process_loop",
    )
    options = [*worker_options("gthread", GTHREAD_THREADS), "--preload"]
    with serving_the_users_app(tmp_path, options, app_text) as served:
        assert "Hello from /forked" in page_view(served, "/forked")


# -- an app in this process, under Werkzeug's threaded server -----------------------------------


@contextlib.contextmanager
def werkzeug_serving(app: Flask) -> Iterator[str]:
    """``app`` served by Werkzeug's threaded server (as ``flask run`` does); its ws:// URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(HANG_GUARD)


def test_allowed_guards_the_page_and_the_view() -> None:
    """``allowed()`` refuses the page with 401 and the view's websocket with close code 4401;
    allowed, the page is served and its view renders."""
    app = Flask(__name__)

    @component
    def Secret() -> VdomDict:
        return html.p("the secret")

    mount(app, "/secret", Secret, allowed=lambda: request.args.get("key") == "open")
    with werkzeug_serving(app) as ws_url:
        http_url = ws_url.replace("ws://", "http://")
        assert httpx.get(f"{http_url}/secret/page").status_code == 401
        assert httpx.get(f"{http_url}/secret/page?key=open").status_code == 200
        with connect(f"{ws_url}/_reactpy/stream/secret/page") as refused:
            with pytest.raises(ConnectionClosed) as closed:
                refused.recv(timeout=HANG_GUARD)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        with connect(f"{ws_url}/_reactpy/stream/secret/page?key=open") as view:
            assert "the secret" in texts(first_update(view)["model"])


def test_a_view_whose_browser_stops_reading_is_closed_not_buffered() -> None:
    """A view that keeps sending to a browser that reads nothing is ended once its updates
    back up (past what the sockets hold, OUTBOX_LIMIT more wait in the server), rather than
    queued without end; the browser, when it reads again, gets what the sockets held, then
    close code 1013 (try again later)."""
    app = Flask(__name__)
    ended = threading.Event()
    update_bytes = 64 * 1024

    @component
    def Flood() -> VdomDict:
        count, set_count = use_state(0)

        @use_effect(dependencies=[])
        async def keep_updating() -> None:
            try:
                for number in itertools.count(1):
                    set_count(number)
                    await asyncio.sleep(0)
            finally:
                ended.set()

        return html.pre(f"{count:08d}" + "x" * update_bytes)

    mount(app, "/flood", Flood)
    with (
        werkzeug_serving(app) as ws_url,
        # Flow control: past one frame waiting to be read, the client leaves the socket unread.
        connect(f"{ws_url}/_reactpy/stream/flood", max_queue=1) as view,
    ):
        first_update(view)
        # Reading nothing now, as a browser tab that hangs: the view must end on its own.
        assert ended.wait(HANG_GUARD), "the view kept running for a browser that reads nothing"
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                view.recv(timeout=HANG_GUARD)
                received += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_FELL_BEHIND
    print(f"the browser read {received} more updates, then close 1013 (outbox: {OUTBOX_LIMIT})")


# -- a view that ends while it renders --------------------------------------------------------


def test_a_view_ended_midway_through_a_render_stops_every_effect() -> None:
    """A view may end at any moment of a render (its browser goes away while components are
    swapped): the render finishes, the layout unmounts, and no effect is left running, at
    whichever await of the render the end lands."""
    live: set[int] = set()
    swaps: list[Any] = []

    @component
    def Listener(number: int) -> VdomDict:
        @use_effect(dependencies=[])
        def listen() -> Any:
            live.add(number)
            return lambda: live.discard(number)

        return html.p(number)

    @component
    def Swapping() -> VdomDict:
        generation, set_generation = use_state(0)
        swaps.append(set_generation)
        first = generation * 100
        return html.div([Listener(first + index, key=str(first + index)) for index in range(20)])

    async def end_after(ticks: int) -> None:
        swaps.clear()
        async with WholeRenders(Swapping()) as layout:
            await layout.render()
            await asyncio.sleep(0.01)  # the first listeners' effects start
            swaps[-1](1)  # every listener is replaced by a new one
            rendering = asyncio.create_task(layout.render())
            for _ in range(ticks):
                await asyncio.sleep(0)
            rendering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rendering
        await asyncio.sleep(0.01)  # what a stopped effect does, it has done by now

    for ticks in range(60):
        asyncio.run(end_after(ticks))
        assert live == set(), f"ended after {ticks} ticks: effects of {sorted(live)} still run"
