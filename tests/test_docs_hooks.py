"""docs/hooks.md's example, run as a user would run it.

Every ```python block compiles and imports names that exist; the blocks that name a file
(``# shout_app.py``) are formatted and linted as ruff would, and written to a folder of their
own. A real server and the page's ``runstream worker`` command run the task, the page's
gunicorn command serves the app, and its page, driven over ReactPy's websocket as a browser's
client would (a click on its button), triggers the task with the token its ``/`` minted and
shows the run through to its output.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, free_port, start_server
from doc_blocks import (
    Block,
    assert_formatted_and_lint_clean,
    blocks_of,
    example_env,
    files_of,
    shell_command,
)
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
TIMEOUT = 60


BLOCKS = blocks_of(PAGE)
PYTHON = [block for block in BLOCKS if block.language == "python"]
FILES = files_of(BLOCKS)


def page_command(prefix: str) -> list[str]:
    return shell_command(BLOCKS, prefix, "docs/hooks.md")


def test_the_page_has_the_example_files() -> None:
    assert {"shout_tasks.py", "shout_app.py"} <= FILES.keys()


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name or "snippet")
def test_every_python_block_compiles_and_imports_names_that_exist(block: Block) -> None:
    tree = ast.parse(block.text)
    compile(tree, block.name or "docs/hooks.md", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runstream"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


@pytest.mark.parametrize("block", FILES.values(), ids=lambda block: block.name)
def test_every_example_file_is_formatted_and_lint_clean(block: Block) -> None:
    assert_formatted_and_lint_clean(block.text)


# -- the example, run --------------------------------------------------------------------------


@dataclass
class Served:
    """The example's app, served by the page's gunicorn command beside a server and a worker."""

    url: str
    server: ServerProcess


def stop_group(process: subprocess.Popen[bytes], signal_number: int) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal_number)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def started(command: list[str], folder: Path, env: dict[str, str], log: Path) -> Any:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("hooks-example")
    for name, block in FILES.items():
        (folder / name).write_text(block.text)
    server = start_server(folder / "instance")
    env = example_env(folder, server.url)
    worker_command = page_command("runstream worker ")
    worker = started(["runstream.server", *worker_command[1:]], folder, env, folder / "worker.log")
    gunicorn_command = page_command("gunicorn ")
    port = free_port()
    gunicorn_command[gunicorn_command.index("--bind") + 1] = f"127.0.0.1:{port}"
    gunicorn = started(["gunicorn", *gunicorn_command[1:]], folder, env, folder / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while b"worker: running" not in (folder / "worker.log").read_bytes():
            assert worker.poll() is None, (folder / "worker.log").read_text()
            assert time.monotonic() < deadline, (folder / "worker.log").read_text()
            time.sleep(0.05)
        while True:
            assert gunicorn.poll() is None, (folder / "gunicorn.log").read_text()
            try:
                httpx.get(url + "/shout", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (folder / "gunicorn.log").read_text()
                time.sleep(0.1)
        yield Served(url, server)
    finally:
        stop_group(gunicorn, signal.SIGINT)
        code = stop_group(worker, signal.SIGTERM)
        server.stop()
    assert code == 0, (folder / "worker.log").read_text()


def click_target(model: Any) -> str | None:
    """The event target of the first element with an ``on_click`` in a ReactPy model."""
    if isinstance(model, dict):
        handlers = model.get("eventHandlers") or {}
        for event, handler in handlers.items():
            if event.lower() in ("onclick", "on_click"):
                target: str = handler["target"]
                return target
        for child in model.get("children", []):
            found = click_target(child)
            if found is not None:
                return found
    return None


def updates_until(ws: ClientConnection, *texts: str) -> list[str]:
    """The page's updates until every one of ``texts`` has been shown."""
    updates: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while not all(any(text in update for update in updates) for text in texts):
        assert time.monotonic() < deadline, "the page never showed all of {texts}:\n" + "\n".join(
            updates
        )
        updates.append(str(ws.recv(timeout=max(deadline - time.monotonic(), 0.1))))
    return updates


def test_the_example_page_triggers_the_task_and_follows_its_run(served: Served) -> None:
    home = httpx.get(served.url + "/", timeout=10)
    assert home.status_code == 302
    location = home.headers["location"]
    assert re.fullmatch(r"/shout\?token=[\w.-]+", location), location
    token = location.split("=", 1)[1]
    with httpx.Client(
        base_url=served.server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as as_visitor:
        assert as_visitor.get("/api/v1/runs").status_code == 403  # the token reads nothing

    socket_url = served.url.replace("http://", "ws://") + "/_reactpy/stream" + location
    with connect(socket_url, open_timeout=10, proxy=None) as ws:
        first = json.loads(updates_until(ws, "Shout")[-1])
        target = click_target(first["model"])
        assert target is not None, first
        ws.send(json.dumps({"type": "layout-event", "target": target, "data": [{}]}))
        shown = "\n".join(
            updates_until(ws, "COMPLETED", "words: 2 chunks", "DURABLE STREAMS", "finished at")
        )
    run_id = re.search(r"Run (run_\w+)", shown)
    assert run_id is not None, shown
    with served.server.client() as client:
        run = client.get(f"/api/v1/runs/{run_id.group(1)}").json()
    assert (run["task_id"], run["status"]) == ("shout", "COMPLETED")
    assert run["output"] == {"shouted": "DURABLE STREAMS"}
