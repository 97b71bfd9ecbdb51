"""Accessibility of the dashboard: axe-core finds no serious or critical violation on any page.

Every page a user sees — the sign-in, the runs list, a run page of a text stream (in its Text and
its Chunks view), of a JSON stream and of a failed run — is opened in Debian's Chromium against a
real `runstream serve` and a real worker, in the light and the dark colour scheme, 1280 and 375
px wide, and checked by axe-core with its default rules. Only "serious" and "critical" fail the
test (issue #13): they are what keeps someone from using the page, such as text too faint to read
or a control without a name. The failure lists each violation's rule, its help and the selectors
of the offending elements, so the message alone says what to fix.

axe-core comes from npm, pinned in ``tests/browser/package-lock.json``:
``npm ci --prefix tests/browser`` installs it (CI does); without it these tests skip.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ServerProcess
from dashboard_support import (  # the shared fixtures, used by name below
    HANG_GUARD,
    TESTS,
    ColorScheme,
    OpenPage,
    browser,
    dashboard_server,
    open_page,
    save_screenshot,
    signed_in,
    trigger,
    worker,
)

with contextlib.suppress(ImportError):  # without Playwright these tests skip (`browser`)
    from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

# The shared fixtures this module uses (open_page's own among them), found by pytest here.
__all__ = ["browser", "dashboard_server", "open_page", "signed_in", "worker"]

AXE_SCRIPT = TESTS / "browser" / "node_modules" / "axe-core" / "axe.min.js"
FAILING_IMPACTS = ("serious", "critical")
COLOR_SCHEMES = ("light", "dark")
WIDTHS = (1280, 375)
# Enough of the offending elements to find them all by their pattern; the rest are counted.
NODES_SHOWN = 8
TEXT_CHUNKS = [
    "# Release notes\n\n",
    "Runstream stores ",
    "**every chunk** ",
    "and streams it live.\n\n",
    "- [the README](https://example.com/readme)\n- `inline code`\n",
]
JSON_CHUNKS = [
    {"step": "fetch", "ok": True, "rows": 3},
    {"step": "parse", "tags": ["alpha", "beta"], "took_ms": 12.5},
]
FAILURE_CHUNK = "Thinking about it"
FAILURE_MESSAGE = "the model refused the prompt"


@dataclass(frozen=True)
class DashboardPage:
    """A page to check: where it is, whether it needs the session, and what it shows once it
    is in the state that is checked (rendered by ReactPy, its streams complete)."""

    path: str
    needs_session: bool
    ready: Callable[[Page], None]


@pytest.fixture(scope="module")
def axe_script() -> Path:
    if not AXE_SCRIPT.exists():
        pytest.skip(f"{AXE_SCRIPT} is missing: run `npm ci --prefix tests/browser` to install it")
    return AXE_SCRIPT


def wait_for_status(server: ServerProcess, run_id: str, status: str) -> None:
    """Poll the run until it has ``status``, so that its page opens on its final state."""
    deadline = time.monotonic() + HANG_GUARD
    with server.client() as client:
        while (current := client.get(f"/api/v1/runs/{run_id}").json()["status"]) != status:
            assert time.monotonic() < deadline, f"run {run_id} is still {current}, not {status}"
            time.sleep(0.05)


def failed_run(server: ServerProcess) -> str:
    """A run that wrote a chunk of text and then failed, reported through the HTTP API as a
    worker reports it (no worker serves its task: the test claims it)."""
    run_id = trigger(server, "a11y.fails", {"prompt": "say something"})
    with server.client() as client:
        claimed = client.post(
            "/api/v1/runs/claim", json={"worker_id": "a11y", "task_ids": ["a11y.fails"]}
        )
        assert [run["id"] for run in claimed.json()["runs"]] == [run_id], claimed.text
        stream = f"/v1/stream/runs/{run_id}/default"
        json_type = {"Content-Type": "application/json"}
        assert client.put(stream, headers=json_type).status_code == 201
        appended = client.post(
            stream,
            content=json.dumps([FAILURE_CHUNK]),
            headers={**json_type, "Stream-Closed": "true"},
        )
        assert appended.status_code == 204, appended.text
        error = {"name": "RefusalError", "message": FAILURE_MESSAGE}
        failed = client.post(
            f"/api/v1/runs/{run_id}/fail", json={"worker_id": "a11y", "error": error}
        )
        assert failed.status_code == 200, failed.text
    return run_id


def run_page(run_id: str, chunks: int, *, chunk_list: bool = False) -> Callable[[Page], None]:
    """Ready when the run page shows the run and its stream's ``chunks`` and end; in the
    Chunks view if ``chunk_list``."""

    def ready(page: Page) -> None:
        expect(page.get_by_role("heading", name=run_id, level=1)).to_be_visible()
        view = page.locator(".stream-view")
        expect(view.locator(".status")).to_have_text("Complete")
        expect(view.locator(".chunk-count")).to_have_text(f"{chunks} chunk" + "s" * (chunks != 1))
        if chunk_list:
            view.get_by_role("button", name="Chunks").click()
            expect(view.locator("li.chunk")).to_have_count(chunks)

    return ready


def login_page(page: Page) -> None:
    expect(page.locator("h1")).to_have_text("Runstream")


@pytest.fixture(scope="module")
def dashboard_pages(
    dashboard_server: ServerProcess,
    worker: object,
) -> dict[str, DashboardPage]:
    """The pages to check, by name; the runs they show have ended."""
    server = dashboard_server
    text_run = trigger(server, "e2e.pipe", {"chunks": TEXT_CHUNKS})
    json_run = trigger(server, "e2e.pipe", {"chunks": JSON_CHUNKS, "key": "events"})
    failed = failed_run(server)
    wait_for_status(server, text_run, "COMPLETED")
    wait_for_status(server, json_run, "COMPLETED")

    def runs_listed(page: Page) -> None:
        expect(page.locator("main h1")).to_have_text("Runs")
        for run_id in (text_run, json_run, failed):
            expect(page.locator("main")).to_contain_text(run_id)

    def failure_shown(page: Page) -> None:
        run_page(failed, 1)(page)
        expect(page.locator("main")).to_contain_text(FAILURE_MESSAGE)

    text_chunks = len(TEXT_CHUNKS)
    return {
        "login": DashboardPage("/login", False, login_page),
        "runs": DashboardPage("/runs", True, runs_listed),
        "text-run": DashboardPage(f"/runs/{text_run}", True, run_page(text_run, text_chunks)),
        "text-run-chunks": DashboardPage(
            f"/runs/{text_run}", True, run_page(text_run, text_chunks, chunk_list=True)
        ),
        "json-run": DashboardPage(f"/runs/{json_run}", True, run_page(json_run, len(JSON_CHUNKS))),
        "failed-run": DashboardPage(f"/runs/{failed}", True, failure_shown),
    }


def serious_violations(page: Page, axe: Path) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    page.add_script_tag(path=str(axe))
    results: dict[str, Any] = page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})"
    )
    return [
        violation for violation in results["violations"] if violation["impact"] in FAILING_IMPACTS
    ]


def describe(violations: list[dict[str, Any]]) -> str:
    """Each violation's rule, impact, help and offending elements: what to fix, and where."""
    lines: list[str] = []
    for violation in violations:
        lines.append(
            f"- {violation['id']} ({violation['impact']}): {violation['help']}"
            f" <{violation['helpUrl']}>"
        )
        nodes = violation["nodes"]
        for node in nodes[:NODES_SHOWN]:
            selector = " ".join(
                " >> ".join(part) if isinstance(part, list) else part for part in node["target"]
            )
            summary = " ".join(node.get("failureSummary", "").split())
            lines.append(f"    {selector}: {summary}")
        if len(nodes) > NODES_SHOWN:
            lines.append(f"    … and {len(nodes) - NODES_SHOWN} more elements")
    return "\n".join(lines)


@pytest.mark.parametrize("width", WIDTHS, ids=lambda width: f"{width}px")
@pytest.mark.parametrize("color_scheme", COLOR_SCHEMES)
@pytest.mark.parametrize(
    "name", ["login", "runs", "text-run", "text-run-chunks", "json-run", "failed-run"]
)
def test_page_has_no_serious_accessibility_violation(
    axe_script: Path,
    name: str,
    color_scheme: ColorScheme,
    width: int,
    dashboard_pages: dict[str, DashboardPage],
    open_page: OpenPage,
    dashboard_server: ServerProcess,
    tmp_path: Path,
) -> None:
    """axe-core reports no serious or critical violation on the page, in this colour scheme
    at this width."""
    shown = dashboard_pages[name]
    page = open_page(width, color_scheme, signed_in=shown.needs_session)
    page.goto(f"{dashboard_server.url}{shown.path}")
    shown.ready(page)
    violations = serious_violations(page, axe_script)
    save_screenshot(page, tmp_path, f"a11y-{name}-{color_scheme}-{width}.png")
    if violations:
        pytest.fail(
            f"axe-core found {len(violations)} serious or critical violations on {name} "
            f"({shown.path}, {color_scheme} colour scheme, {width} px wide):\n"
            f"{describe(violations)}",
            pytrace=False,
        )
