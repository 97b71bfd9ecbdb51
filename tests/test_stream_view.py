"""What the run page's stream view costs as a stream grows, measured on its websocket, and what it
shows: a real `runstream serve` (gunicorn's gevent worker) and raw websocket clients of the
page's ReactPy view route, as the browser's client would be.

A new chunk must cost the page about its own size however long the stream is: the bytes sent
for the 1,001st … 1,100th chunk of a stream and for the 10,001st … 10,100th are compared.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ServerProcess, start_server
from dashboard_support import (  # the shared fixtures, used by name below
    browser,
    dashboard_server,
    page,
    save_screenshot,
    signed_in,
    trigger,
    worker,
)
from websockets.sync.client import ClientConnection, connect

with contextlib.suppress(ImportError):  # without Playwright the browser tests skip (`browser`)
    from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "dashboard_server", "page", "signed_in", "worker"]

HANG_GUARD = 60.0
ADDED = 100
# How long the view must stay silent for its updates to count as all received.
QUIET = 0.5


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Authentication off (loopback only), so that the raw view clients need no session."""
    server = start_server(
        tmp_path_factory.mktemp("stream-view"), env={"RUNSTREAM_AUTH": "disabled"}
    )
    yield server
    server.stop()


def new_run(server: ServerProcess) -> str:
    """A run of a task no worker serves: the test writes its stream itself."""
    with server.client() as client:
        response = client.post("/api/v1/tasks/e2e.manual/trigger", json={"payload": None})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def llm_tokens(start: int, count: int) -> list[str]:
    """Text as an LLM writes it: words of a few characters, a paragraph every 40 tokens and a
    heading every 400."""
    tokens = []
    for index in range(start, start + count):
        if index % 400 == 0:
            tokens.append(f"\n\n## Part {index // 400}\n\n")
        elif index % 40 == 0:
            tokens.append("\n\n")
        else:
            tokens.append(f"word{index % 97} ")
    return tokens


def append(server: ServerProcess, run_id: str, chunks: list[Any]) -> None:
    with server.client() as client:
        for start in range(0, len(chunks), 5000):
            response = client.post(
                f"/v1/stream/runs/{run_id}/default",
                content=json.dumps(chunks[start : start + 5000]),
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 204, response.text


def open_view(server: ServerProcess, path: str) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + f"/_reactpy/stream{path}"
    return connect(url, open_timeout=HANG_GUARD, max_queue=None, max_size=None)


def receive_until(view: ClientConnection, text: str) -> int:
    """Read updates until one carries ``text``, then until the view is quiet; the bytes read."""
    received = 0
    deadline = time.monotonic() + HANG_GUARD
    while True:
        try:
            message = view.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            raise AssertionError(f"the view sent no update carrying {text!r}") from None
        received += len(message)
        if text in message:
            break
    while True:
        try:
            message = view.recv(timeout=QUIET)
        except TimeoutError:
            return received
        received += len(message)


def bytes_for_new_chunks(server: ServerProcess, existing: int) -> tuple[int, int]:
    """The bytes the run page's view sent to show a stream of ``existing`` chunks, and then the
    bytes it sent for ADDED more, appended one at a time."""
    run_id = new_run(server)
    append(server, run_id, llm_tokens(0, existing))
    with open_view(server, f"/runs/{run_id}") as view:
        first = receive_until(view, f"{existing} chunks")
        added = 0
        for index, token in enumerate(llm_tokens(existing, ADDED)):
            append(server, run_id, [token])
            added += receive_until(view, f"{existing + index + 1} chunks")
    return first, added


def test_a_new_chunk_costs_the_page_the_same_at_10000_chunks_as_at_1000(
    open_server: ServerProcess, record_property: Any
) -> None:
    small_first, small = bytes_for_new_chunks(open_server, 1000)
    large_first, large = bytes_for_new_chunks(open_server, 10_000)
    figures = {
        "page of 1,000 chunks": small_first,
        "chunks 1,001-1,100": small,
        "page of 10,000 chunks": large_first,
        "chunks 10,001-10,100": large,
        "per chunk at 1,000": small / ADDED,
        "per chunk at 10,000": large / ADDED,
    }
    record_property("view bytes", figures)
    print(f"bytes sent by the view: {figures}")
    assert large <= 2 * small, (
        f"chunks 10,001-10,100 cost the page {large} bytes, chunks 1,001-1,100 {small}"
    )


# -- in the browser -----------------------------------------------------------------------------
# Debian's Chromium, signed in to a dashboard served with authentication on, and a real worker.


@pytest.mark.usefixtures("worker")
def test_the_chunks_view_shows_each_chunks_stored_write_time(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """Each row's time is when its chunk was written (the store's time, not the page's): two
    chunks written 1.5 s apart, on a page opened after both, show times 1.5 s apart, and the
    time's title names its timezone."""
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": ["first", "second"], "delay": 1.5})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")
    time.sleep(1.0)
    page.reload()
    view.get_by_role("button", name="Chunks").click()
    times = view.locator("li.chunk time.chunk-time")
    expect(times).to_have_count(2)
    stamps = [times.nth(index).get_attribute("datetime") or "" for index in range(2)]
    moments = [datetime.fromisoformat(stamp.replace("Z", "+00:00")) for stamp in stamps]
    gap = (moments[1] - moments[0]).total_seconds()
    assert 1.4 <= gap <= 5, f"the rows' times are {stamps}: not the chunks' write times"
    opened = datetime.now(UTC)
    assert all(moment < opened for moment in moments)
    title = times.nth(0).get_attribute("title") or ""
    assert re.search(r"(UTC|GMT)", title), f"the time's title names no timezone: {title!r}"


@pytest.mark.usefixtures("worker")
def test_copy_all_puts_the_streams_whole_text_on_the_clipboard(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """ "Copy all" copies the stream's text exactly as it was written (its Markdown source, not
    the HTML it renders to), from both views."""
    chunks = ["# Title\n\n", "some **bold** ", "text\n", "\n", "- a\n- b\n", "end ✓"]
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": chunks})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")
    for mode in ("Text", "Chunks"):
        page.evaluate("navigator.clipboard.writeText('')")
        view.get_by_role("button", name=mode).click()
        view.get_by_role("button", name="Copy all").click()
        expect(view.locator("button.copy")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == "".join(chunks)


@pytest.mark.usefixtures("worker")
def test_a_bare_newline_chunk_shows_as_a_mark_and_json_as_one_block_per_chunk(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """A whitespace-only chunk is a visible mark in the Chunks view, not an empty row; a JSON
    stream opens in its JSON view, one pretty-printed block per chunk (never ``}{``), the long
    ones folded."""
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": ["one", "\n", "two"]})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")
    view.get_by_role("button", name="Chunks").click()
    expect(view.locator("li.chunk .chunk-value")).to_have_text(["one", "↵", "two"])
    expect(view.locator("li.chunk .chunk-value.whitespace")).to_have_attribute(
        "title", "a line break"
    )

    long = {"items": list(range(20))}
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": [{"a": 1}, {"b": 2}, long]})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")
    expect(view.get_by_role("button", name="JSON")).to_have_attribute("aria-pressed", "true")
    blocks = view.locator(".json-block")
    expect(blocks).to_have_count(3)
    assert json.loads(blocks.nth(0).inner_text()) == {"a": 1}
    assert json.loads(blocks.nth(1).inner_text()) == {"b": 2}
    folded = blocks.nth(2).locator("details")
    expect(folded).not_to_have_attribute("open", "")
    folded.locator("summary").click()
    assert json.loads(folded.locator("pre").inner_text()) == long
    assert "}{" not in view.locator(".stream-body").inner_text()


def test_the_run_page_of_a_10000_chunk_stream_shows_every_chunk(
    page: Page, dashboard_server: ServerProcess, tmp_path: Path
) -> None:
    """A run page opened on a stream of 10,000 chunks shows all of them, in order, in the Text
    view and as 10,000 rows in the Chunks view."""
    run_id = trigger(dashboard_server, "e2e.manual", None)
    append(dashboard_server, run_id, [f"t{index} " for index in range(10_000)])
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".chunk-count")).to_have_text("10000 chunks")
    text = view.locator(".stream-body").inner_text()
    assert text.split() == [f"t{index}" for index in range(10_000)]
    view.get_by_role("button", name="Chunks").click()
    expect(view.locator("li.chunk")).to_have_count(10_000)
    assert view.locator("li.chunk").last.locator(".chunk-value").inner_text() == "t9999 "
    save_screenshot(page, tmp_path, "run-page-10000-chunks.png")
