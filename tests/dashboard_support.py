"""What the dashboard's browser tests share: a real `runstream serve`, a real
``runstream worker --tasks e2e_tasks``, Debian's Chromium driven by Playwright, a signed-in
browser session, pages of any width and colour scheme, and screenshots under ``test-results/``.

A plain module, not a conftest: a test module imports the fixtures it uses by name
(``from dashboard_support import browser, page, ...``) and pytest picks them up there, so only
the modules that drive a browser start one, each its own server and worker (module scope).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pytest
from conftest import SECRET_KEY, ServerProcess, start_server

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixtures skip; tests without a browser still run
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Where screenshots go, for a person (or CI's artifacts) to look at after the run.
TEST_RESULTS = ROOT / "test-results"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Only against hangs: nothing here is expected to come near these.
HANG_GUARD = 30.0
HANG_GUARD_MS = int(HANG_GUARD * 1000)
WIDE = 1280
HEIGHT = 900
ColorScheme = Literal["light", "dark"]


class OpenPage(Protocol):
    """What the ``open_page`` fixture gives: a page of that width and colour scheme."""

    def __call__(
        self, width: int = ..., color_scheme: ColorScheme = ..., *, signed_in: bool = ...
    ) -> Page: ...


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`runstream serve` with authentication on: the browser signs in with the secret key."""
    server = start_server(tmp_path_factory.mktemp("dashboard"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(
    dashboard_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m runstream.server worker --tasks e2e_tasks`` against the dashboard server."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runstream.server", "worker", "--tasks", "e2e_tasks"],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(TESTS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "RUNSTREAM_API_URL": dashboard_server.url,
                "RUNSTREAM_SECRET_KEY": SECRET_KEY,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + HANG_GUARD
    while b"worker: running" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the worker did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (never Playwright's own download)."""
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed: pip install -e '.[test]'")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (Debian's package)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def signed_in(browser: Browser, dashboard_server: ServerProcess) -> Iterator[BrowserContext]:
    """A browser session signed in to the dashboard through its /login form."""
    context = browser.new_context(viewport={"width": WIDE, "height": HEIGHT})
    context.set_default_timeout(HANG_GUARD_MS)
    expect.set_options(timeout=HANG_GUARD_MS)
    page = context.new_page()
    page.goto(f"{dashboard_server.url}/runs")
    expect(page).to_have_url(re.compile(r"/login\?next=/runs$"))
    page.fill("input[name=secret_key]", SECRET_KEY)
    page.click("button")
    expect(page).to_have_url(f"{dashboard_server.url}/runs")
    expect(page.locator("main h1")).to_have_text("Runs")
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(signed_in: BrowserContext) -> Iterator[Page]:
    page = signed_in.new_page()
    yield page
    page.close()


@pytest.fixture
def open_page(browser: Browser, signed_in: BrowserContext) -> Iterator[OpenPage]:
    """``open_page(width=1280, color_scheme="light", signed_in=True)``: a new page in a context
    of its own with that viewport width and ``prefers-color-scheme``, carrying the signed-in
    session's cookie unless ``signed_in`` is False. The contexts close after the test."""
    session = signed_in
    contexts: list[BrowserContext] = []

    def open_one(
        width: int = WIDE, color_scheme: ColorScheme = "light", *, signed_in: bool = True
    ) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": HEIGHT},
            color_scheme=color_scheme,
            storage_state=session.storage_state() if signed_in else None,
        )
        context.set_default_timeout(HANG_GUARD_MS)
        contexts.append(context)
        return context.new_page()

    yield open_one
    for context in contexts:
        context.close()


def trigger(server: ServerProcess, task_id: str, payload: Any) -> str:
    """Trigger a run through the HTTP API; its id."""
    with server.client() as client:
        response = client.post(f"/api/v1/tasks/{task_id}/trigger", json={"payload": payload})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def save_screenshot(page: Page, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
    """A screenshot of the page in the test's folder, copied to ``test-results/`` at the
    repository's root (the test output folder) under the same name; the latter's path."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    TEST_RESULTS.mkdir(exist_ok=True)
    saved = TEST_RESULTS / name
    saved.write_bytes(path.read_bytes())
    return saved


def gunicorn_worker_pid(server: ServerProcess) -> int:
    """The single gunicorn worker process of `runstream serve`: the arbiter's only child."""
    arbiter = server.process.pid
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
        if len(children) == 1:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"gunicorn's arbiter {arbiter} has no single worker: {children}")


def resident_kib(pid: int) -> int:
    """The process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")
