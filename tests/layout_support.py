"""What the hook tests of streams and of runs share: a Runstream app in-process (the fixtures
``app`` and ``runtime``), and its components rendered through ReactPy's own Layout, as a page's
view renders them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from flask import Flask
from reactpy.core.layout import Layout
from reactpy.core.types import ComponentType

from runstream.server import Runtime, create_app

# Generous, only so that a hook that never delivers fails instead of hanging the suite.
WAIT = 15.0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """A Runstream app on an SQLite file, with its app context pushed for the whole test."""
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "rs_sk_0123456789"})
    with app.app_context():
        yield app
    app.extensions["runstream"].close()


@pytest.fixture
def runtime(app: Flask) -> Runtime:
    value: Runtime = app.extensions["runstream"]
    return value


class View:
    """A mounted Layout that is rendered continuously by one background task.

    The render task is only cancelled when the view closes, after which the layout never
    renders again (a cancelled ``layout.render()`` may lose a scheduled render).
    """

    def __init__(self, root: ComponentType) -> None:
        self.layout = Layout(root)
        self._renders: asyncio.Task[None] | None = None
        self.render_count = 0

    async def __aenter__(self) -> View:
        await self.layout.__aenter__()
        self._renders = asyncio.create_task(self._render_forever())
        await until(lambda: self.render_count > 0, "the view renders")
        return self

    async def _render_forever(self) -> None:
        while True:
            await self.layout.render()
            self.render_count += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._renders is not None
        if self._renders.done():
            self._renders.result()  # a render that raised fails the test
        self._renders.cancel()
        with suppress(asyncio.CancelledError):
            await self._renders
        await self.layout.__aexit__(exc_type, exc, traceback)


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds; fail (not hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        await asyncio.sleep(0.005)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one scenario in its own event loop (asyncio.run copies the pushed app context)."""
    asyncio.run(scenario())
