"""The dashboard's pages around the stream view (issue #13), in Debian's Chromium against a real
`runstream serve` and a real ``runstream worker --tasks e2e_tasks``: cancel and trigger again,
the substring task filter, the hint for a run no worker claims, the status timeline, times with
their zone, and a 375 px layout without sideways scrolling, with screenshots of each page.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import ServerProcess
from dashboard_support import (  # the shared fixtures, used by name below
    OpenPage,
    browser,
    dashboard_server,
    open_page,
    page,
    save_screenshot,
    signed_in,
    trigger,
    worker,
)

with contextlib.suppress(ImportError):  # without Playwright the browser tests skip (`browser`)
    from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "dashboard_server", "open_page", "page", "signed_in", "worker"]


FITS = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"


def no_sideways_scroll(page: Page) -> bool:
    return bool(page.evaluate(FITS))


def test_cancel_ends_a_queued_run(page: Page, dashboard_server: ServerProcess) -> None:
    """ "Cancel" on the page of a run no worker serves ends it: CANCELED, and no more Cancel."""
    run_id = trigger(dashboard_server, "e2e.nobody", {"n": 1})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("article.run")).to_have_attribute("data-status", "CANCELED")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.locator(".no-streams")).to_contain_text("wrote no streams")


@pytest.mark.usefixtures("worker")
def test_trigger_again_starts_the_same_task_with_the_same_payload(
    page: Page, dashboard_server: ServerProcess
) -> None:
    payload = {"chunks": ["again"], "marker": "same-payload"}
    run_id = trigger(dashboard_server, "e2e.pipe", payload)
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    expect(page.locator("article.run")).to_have_attribute("data-status", "COMPLETED")
    page.get_by_role("button", name="Trigger again").click()
    page.locator("a.new-run").click()
    expect(page.locator("article.run .run-id")).not_to_have_text(run_id)
    new_id = page.locator("article.run .run-id").text_content() or ""
    with dashboard_server.client() as client:
        again = client.get(f"/api/v1/runs/{new_id}").json()
    assert again["task_id"] == "e2e.pipe"
    assert again["payload"] == payload


def test_task_filter_matches_a_substring_in_any_case(
    page: Page, dashboard_server: ServerProcess
) -> None:
    wanted = trigger(dashboard_server, "filter.Alpha_one", None)
    other = trigger(dashboard_server, "filter.beta", None)
    page.goto(f"{dashboard_server.url}/runs")
    page.get_by_role("searchbox", name="Task id contains").fill("ALPHA_")
    expect(page.locator(f'tr[data-run-id="{wanted}"]')).to_be_visible()
    expect(page.locator(f'tr[data-run-id="{other}"]')).to_have_count(0)


def test_queued_run_gets_a_worker_hint_and_a_timeline(
    page: Page, dashboard_server: ServerProcess
) -> None:
    run_id = trigger(dashboard_server, "e2e.unserved", None)
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    hint = page.locator(".hint-box")
    expect(hint).to_contain_text("e2e.unserved")
    expect(hint).to_contain_text("runstream worker --tasks")
    steps = page.locator(".timeline .step")
    expect(steps).to_have_count(3)
    expect(steps.nth(0)).to_contain_text("Queued")
    created = page.locator(".timeline time").first
    assert (created.get_attribute("datetime") or "").endswith("Z")
    assert "UTC" in (created.get_attribute("title") or "")


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("width", [1280, 375])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_fit_and_are_screenshotted(
    open_page: OpenPage,
    dashboard_server: ServerProcess,
    tmp_path: Path,
    width: int,
    scheme: str,
) -> None:
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": ["# Hello\n\n", "world"]})
    for name, path, signed in [
        ("login", "/login", False),
        ("runs", "/runs", True),
        ("run", f"/runs/{run_id}", True),
    ]:
        shown = open_page(width, scheme, signed_in=signed)  # type: ignore[arg-type]
        shown.goto(f"{dashboard_server.url}{path}")
        if name == "run":
            expect(shown.locator("article.run")).to_have_attribute("data-status", "COMPLETED")
            expect(shown.locator(".timeline .step")).to_have_count(3)
        elif name == "runs":
            expect(shown.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
        else:
            expect(shown.locator("h1")).to_have_text("Runstream")
        assert no_sideways_scroll(shown), f"{path} scrolls sideways at {width} px"
        save_screenshot(shown, tmp_path, f"{name}-{scheme}-{width}.png", full_page=True)


@pytest.mark.usefixtures("worker")
def test_an_executing_run_says_it_runs_and_its_times_are_relative_and_local(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """While a run executes its output says so (never a bare ``null``), its times read as how
    long ago, with the full local moment and UTC on hovering, and its duration counts on."""
    chunks = [f"tick {number} " for number in range(40)]
    run_id = trigger(dashboard_server, "e2e.pipe", {"chunks": chunks, "delay": 0.25})
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    expect(page.locator("article.run")).to_have_attribute("data-status", "EXECUTING")
    expect(page.locator(".output.pending")).to_contain_text("Running")
    expect(page.locator("pre.output")).to_have_count(0)
    # The timeline gives the moment in the reader's zone, and how long ago on hovering.
    created = page.locator(".timeline time").first
    expect(created).to_have_text(re.compile(r"\d{1,2}:\d{2}:\d{2}.* UTC$"))
    expect(created).to_have_attribute("title", re.compile(r"(just now|ago) · .* UTC$"))
    running = page.locator(".duration-box .duration")
    first = running.text_content()
    expect(running).not_to_have_text(first or "")  # it counted on, in the browser
    # The list gives how long ago, and the moment on hovering.
    page.goto(f"{dashboard_server.url}/runs")
    listed = page.locator(f'tr[data-run-id="{run_id}"] time').first
    expect(listed).to_have_text(re.compile(r"just now|ago"))
    expect(listed).to_have_attribute("title", re.compile(r"\d{1,2}:\d{2}:\d{2}.* UTC"))


def test_a_waiting_page_sends_nothing_while_its_durations_tick(
    page: Page, dashboard_server: ServerProcess
) -> None:
    """A queued run's page renders again on news only: for seconds without news its view's
    websocket brings no update, while the time it has waited still counts on in the browser."""
    frames: list[str | bytes] = []
    page.on(
        "websocket", lambda socket: socket.on("framereceived", lambda frame: frames.append(frame))
    )
    run_id = trigger(dashboard_server, "e2e.unserved.quiet", None)
    page.goto(f"{dashboard_server.url}/runs/{run_id}")
    waiting = page.locator(".timeline .between .duration").first
    expect(waiting).to_be_visible()
    page.wait_for_timeout(500)  # the first load's updates
    frames.clear()
    shown = waiting.text_content()
    page.wait_for_timeout(3_000)  # past the page's recheck while its run has not ended (2 s)
    assert waiting.text_content() != shown
    assert frames == []


def test_the_favicon_is_served(page: Page, dashboard_server: ServerProcess) -> None:
    page.goto(f"{dashboard_server.url}/login")
    href = page.locator("link[rel=icon]").get_attribute("href") or ""
    icon = page.request.get(f"{dashboard_server.url}{href}")
    assert icon.status == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert page.request.get(f"{dashboard_server.url}/favicon.ico").url.endswith(href)
