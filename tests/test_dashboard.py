"""The runs dashboard end to end: a real `runstream serve` (gunicorn's gevent worker), a real
``runstream worker --tasks e2e_tasks``, and Debian's Chromium driven by Playwright.

The browser tests sign in through /login with the secret key, trigger runs through the HTTP API
and watch /runs and /runs/<run_id> update by themselves. The load test stands in for 500 open
run pages with 500 raw websocket clients of the ReactPy view route, and reads the gunicorn
worker's threads and memory before, during and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import ServerProcess, start_server
from dashboard_support import (  # the shared fixtures, used by name below
    HANG_GUARD,
    HANG_GUARD_MS,
    TESTS,
    browser,
    dashboard_server,
    gunicorn_worker_pid,
    page,
    save_screenshot,
    signed_in,
    trigger,
    worker,
)
from e2e_tasks import numbered_chunks
from websockets.sync.client import ClientConnection, connect

with contextlib.suppress(ImportError):  # without Playwright the browser tests skip (`browser`)
    from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Page

# The shared fixtures this module uses, and the names other modules still import from here.
__all__ = [
    "HANG_GUARD",
    "HANG_GUARD_MS",
    "TESTS",
    "browser",
    "dashboard_server",
    "gunicorn_worker_pid",
    "page",
    "save_screenshot",
    "signed_in",
    "trigger",
    "worker",
]

CHUNKS = 500
CHUNK_DELAY = 0.006  # ~3 s of streaming: the page opens while the run is still writing
VIEWS = 500
# The memory a round of views may leave the server above what it held before the round: what
# the allocator keeps of freed memory varies a little from round to round.
MEMORY_SLACK = 0.10
# Records, in the page, every chunk count and stream status the run page has shown.
OBSERVE_STREAM_VIEW = """
window.__seen = {counts: [], statuses: []};
new MutationObserver(() => {
  const seen = window.__seen;
  const count = document.querySelector(".stream-view .chunk-count")?.textContent;
  const status = document.querySelector(".stream-view .status")?.textContent;
  if (count && count !== seen.counts.at(-1)) seen.counts.push(count);
  if (status && status !== seen.statuses.at(-1)) seen.statuses.push(status);
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


# -- the browser ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_run_page_streams_500_chunks_live_to_completion(
    page: Page, dashboard_server: ServerProcess, tmp_path: Path
) -> None:
    """A run page opened while its task pipes 500 chunks shows every chunk, in order, and then
    the completed run: badge COMPLETED, stream status "Complete"."""
    page.add_init_script(OBSERVE_STREAM_VIEW)
    run_id = trigger(dashboard_server, "e2e.pipe", {"count": CHUNKS, "delay": CHUNK_DELAY})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")

    view = page.locator(".stream-view")
    expect(view.locator(".chunk-count")).to_have_text(f"{CHUNKS} chunks")
    expect(view.locator(".status")).to_have_text("Complete")
    expect(page.locator("article.run > header .badge")).to_have_text("COMPLETED")
    expect(page.locator("article.run")).to_have_attribute("data-status", "COMPLETED")
    expect(view.locator(".stream-body .markdown")).to_contain_text(numbered_chunks(CHUNKS)[-1])
    view.get_by_role("button", name="Chunks").click()
    expect(view.locator("li.chunk")).to_have_count(CHUNKS)
    indexes = view.locator("li.chunk .chunk-index").all_text_contents()
    assert indexes == [str(index) for index in range(CHUNKS)]
    assert view.locator("li.chunk .chunk-value").all_text_contents() == numbered_chunks(CHUNKS)

    seen = page.evaluate("window.__seen")
    counts = [int(text.split()[0]) for text in seen["counts"]]
    assert counts == sorted(counts), f"the chunk count went backwards: {counts}"
    assert "Disconnected" not in seen["statuses"], seen["statuses"]
    assert seen["statuses"][-1] == "Complete"
    print(f"the page showed {len(counts)} chunk counts on its way to {CHUNKS}: {seen}")
    save_screenshot(page, tmp_path, "run-page-500-chunks.png")


@pytest.mark.usefixtures("worker")
def test_runs_list_shows_a_new_run_without_reloading(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """/runs grows a row for a run triggered while it is open, and follows it to COMPLETED,
    without a reload."""
    page.goto(f"{dashboard_server.url}/runs")
    expect(page.locator("table.run-table")).to_be_visible()
    page.evaluate("window.__not_reloaded = true")

    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": ["one", "two"]})
    row = page.locator(f'tr.run-row[data-run-id="{run_id}"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("e2e.pipe")
    expect(row.locator(".badge")).to_have_text("COMPLETED")
    expect(row.locator("td").nth(5)).to_have_text("1")
    assert page.evaluate("window.__not_reloaded") is True


@pytest.mark.usefixtures("worker")
def test_text_view_renders_markdown(page: Page, dashboard_server: ServerProcess) -> None:
    """A stream of text opens in the Text view, which joins the chunks and renders them as
    Markdown: a heading (under the page's own: "# Title" is an h3) and bold text."""
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": ["# Title", "\n\nsome **bold**"]})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")
    expect(view.locator(".chunk-count")).to_have_text("2 chunks")

    expect(view.get_by_role("button", name="Text")).to_have_attribute("aria-pressed", "true")
    expect(view.get_by_role("heading", name="Title", level=3)).to_be_visible()
    expect(view.locator(".stream-body .markdown strong")).to_have_text("bold")
    expect(view.locator(".stream-body .markdown p")).to_have_text("some bold")
    expect(view.locator("li.chunk")).to_have_count(0)

    view.get_by_role("button", name="Chunks").click()
    expect(view.locator("li.chunk")).to_have_count(2)


@pytest.mark.usefixtures("worker")
def test_html_in_chunks_is_shown_as_text(page: Page, dashboard_server: ServerProcess) -> None:
    """Chunks that look like HTML (or a javascript: link) are shown as their text, in the Text
    and the Chunks view: no element is made of them and no script runs."""
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    image = "<img src=x onerror=alert(1)>"
    script = "\n\n<script>window.__injected = true</script> [link](javascript:alert(2))"
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": [image, script]})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    view = page.locator(".stream-view")
    expect(view.locator(".status")).to_have_text("Complete")

    expect(view.locator(".stream-body .markdown p")).to_have_text(
        [image, "<script>window.__injected = true</script> [link](javascript:alert(2))"]
    )
    for selector in ("img", "script", "a"):
        expect(view.locator(f".stream-body {selector}")).to_have_count(0)

    view.get_by_role("button", name="Chunks").click()
    expect(view.locator("li.chunk .chunk-value")).to_have_text([image, script])
    expect(view.locator("img")).to_have_count(0)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__injected") is None
    assert dialogs == []


# -- 500 live views under gunicorn ---------------------------------------------------------------


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`runstream serve` as shipped (gunicorn's gevent worker), authentication off (loopback)."""
    server = start_server(tmp_path / "instance", env={"RUNSTREAM_AUTH": "disabled"})
    yield server
    server.stop()


@pytest.fixture
def sockets_for_the_views() -> None:
    """Room for the views' sockets in this process (and the server it starts): each view is a
    connection, and its client's socket is one more descriptor here."""
    needed = 2 * VIEWS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"{VIEWS} views need {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@dataclass(frozen=True)
class Footprint:
    """What the gunicorn worker holds: its operating-system threads and its resident memory."""

    threads: int
    rss_kib: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        return cls(int(fields["Threads"]), int(fields["VmRSS"].split()[0]))

    def within(self, baseline: Footprint, threads: int) -> bool:
        """At most ``threads`` threads, and MEMORY_SLACK of memory, above ``baseline``."""
        more_threads = self.threads - baseline.threads
        return more_threads <= threads and self.rss_kib <= baseline.rss_kib * (1 + MEMORY_SLACK)

    def __str__(self) -> str:
        return f"{self.threads} threads, {self.rss_kib / 1024:.1f} MiB"


def wait_for_footprint(pid: int, baseline: Footprint, threads: int) -> Footprint:
    """Poll the worker until it is back ``within`` the baseline, or 10 seconds passed; what it
    holds then."""
    deadline = time.monotonic() + 10
    footprint = Footprint.of(pid)
    while not footprint.within(baseline, threads) and time.monotonic() < deadline:
        time.sleep(0.1)
        footprint = Footprint.of(pid)
    return footprint


def append_chunks(server: ServerProcess, run_id: str, chunks: list[Any]) -> httpx.Response:
    """Append JSON chunks to the run's default stream through the Durable Streams HTTP API."""
    with server.client() as client:
        return client.post(
            f"/v1/stream/runs/{run_id}/default",
            content=json.dumps(chunks),
            headers={"Content-Type": "application/json"},
        )


def receive_until(view: ClientConnection, text: str, number: int) -> None:
    """Read the view's layout-update messages until one carries ``text``."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = json.loads(view.recv(timeout=max(remaining, 0.01)))
        except TimeoutError:
            raise AssertionError(f"view {number} got no update carrying {text!r}") from None
        assert message["type"] == "layout-update", message
        if text in json.dumps(message):
            return


def live_views(
    server: ServerProcess, run_id: str, stack: contextlib.ExitStack
) -> list[ClientConnection]:
    """VIEWS websocket clients of /runs/<run_id>'s view, all open at once, each shown the run's
    first chunk."""
    url = server.url.replace("http://", "ws://") + f"/_reactpy/stream/runs/{run_id}"
    views = [
        stack.enter_context(connect(url, open_timeout=HANG_GUARD, max_queue=None))
        for _ in range(VIEWS)
    ]
    for number, view in enumerate(views):
        receive_until(view, "first-chunk", number)
    return views


@pytest.mark.usefixtures("sockets_for_the_views")
def test_five_hundred_live_run_pages_give_back_their_threads_and_memory(
    gunicorn_server: ServerProcess, record_property: Callable[[str, object], None]
) -> None:
    """500 run pages open at once all stay live (each shows a chunk written while they are
    open) without costing the server a thread each, and closing them gives their memory back
    for the next: a second round leaves the server within 10 % of where the first left it."""
    server = gunicorn_server
    pid = gunicorn_worker_pid(server)
    # No worker serves this task: the test writes the run's stream itself.
    run_id = trigger(server, "e2e.manual", None)
    assert append_chunks(server, run_id, ["first-chunk"]).status_code == 204

    # The first round warms the server up: what it keeps of the memory its first 500 views
    # used (the allocator's free lists, caches filled once) belongs to no view. The second
    # round is measured against what the server held after the first.
    # SLACK: threads that gevent or SQLite may start for work of their own meanwhile.
    slack = 3
    footprints = {"cold": Footprint.of(pid)}
    for round_name in ("warm-up", "measured"):
        before = footprints[f"{round_name}, before"] = Footprint.of(pid)
        with contextlib.ExitStack() as stack:
            views = live_views(server, run_id, stack)
            opened = footprints[f"{round_name}, open"] = Footprint.of(pid)
            token = f"fresh-chunk-{round_name}"
            assert append_chunks(server, run_id, [token]).status_code == 204
            for number, view in enumerate(views):
                receive_until(view, token, number)
        assert opened.threads <= before.threads + slack, (
            f"{VIEWS} open views cost threads: {before} before, {opened} open"
        )
    after = footprints["measured, closed"] = wait_for_footprint(pid, before, slack)
    shown = {name: str(footprint) for name, footprint in footprints.items()}
    record_property("footprints", shown)
    print(f"gunicorn worker with {VIEWS} views: {shown}")
    assert after.within(before, slack), (
        f"closing {VIEWS} views left threads or memory behind: {before} before, "
        f"{opened} open, {after} after closing"
    )

    # The stream's topic and the runs topic, to which every view subscribed, still publish
    # cleanly, and no view failed or was left to fail: nothing in the server's output.
    assert append_chunks(server, run_id, ["after-close"]).status_code == 204
    trigger(server, "e2e.manual", None)
    assert server.process.stdout is not None
    os.set_blocking(server.process.stdout.fileno(), False)
    output = (server.process.stdout.read() or b"").decode(errors="replace")
    assert "Traceback" not in output, output
