"""The README's examples, checked as a user would run them.

Every ```python block compiles, imports only names that exist (``runstream`` and its modules, no
longer ``app``, ``sdk`` or ``components``) and is formatted and linted as ruff would. A block whose
first line names a file (``# myapp/tasks.py``) is that file: the tasks module, the scripts and the
Flask ``app.py`` are written to a folder of their own, a real server and the README's
``runstream worker`` command run them, each script prints exactly the ```text block that follows
it in the README, and the README's gunicorn command serves ``app.py``, whose page streams the
answer through ``use_realtime_stream``.
"""

from __future__ import annotations

import ast
import importlib
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

import httpx
import pytest
from conftest import ServerProcess, free_port, start_server
from doc_blocks import (
    SHELLS,
    Block,
    assert_formatted_and_lint_clean,
    blocks_of,
    example_env,
    files_of,
    shell_command,
)
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL_AND_SERVE = "python3 -m pip install -e . && runstream serve --demo"
INSTALL_AND_TEST = "python3 -m pip install -e '.[test]' && python3 -m pytest"
OLD_NAMES = {"app", "sdk", "components"}
SCRIPT_TIMEOUT = 60
ANSWER = "Durable streams never lose a token."


BLOCKS = blocks_of(README)
PYTHON = [block for block in BLOCKS if block.language == "python"]
FILES = files_of(BLOCKS)


def shell_lines() -> list[str]:
    return [
        line.strip()
        for block in BLOCKS
        if block.language in SHELLS
        for line in block.text.splitlines()
    ]


def readme_command(prefix: str) -> list[str]:
    """The README's one shell line that starts with ``prefix``, split into words."""
    return shell_command(BLOCKS, prefix, "the README")


def expected_output(script: str) -> str:
    """The ```text block that follows the script's block: what the README says it prints."""
    block = FILES[script]
    following = [other for other in BLOCKS if other.position > block.position]
    assert following and following[0].language == "text", f"no output shown after {script}"
    return following[0].text


# -- what the README says, without running anything ----------------------------------------------


def test_the_two_set_up_commands_are_there_verbatim_and_alone() -> None:
    lines = shell_lines()
    assert INSTALL_AND_SERVE in lines
    assert INSTALL_AND_TEST in lines
    installs = [line for line in lines if "pip install" in line]
    assert installs == [INSTALL_AND_SERVE, INSTALL_AND_TEST]


def test_the_readme_names_the_files_the_examples_need() -> None:
    assert {"myapp/tasks.py", "watch.py", "watch_sync.py", "app.py"} <= FILES.keys()


def test_no_example_uses_the_old_import_names() -> None:
    old = "|".join(sorted(OLD_NAMES))
    for pattern in (
        rf"\bfrom ({old})(\.\w+)* import\b",
        rf"^\s*import ({old})\b",
        rf"-m ({old})\b",
    ):
        assert not re.search(pattern, README, re.MULTILINE), pattern


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name or str(block.position))
def test_every_python_block_compiles_and_imports_only_names_that_exist(block: Block) -> None:
    tree = ast.parse(block.text, filename=block.name or "README.md")
    compile(tree, block.name or "README.md", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, ast.unparse(node)
            modules = [(node.module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in modules:
            top = module.split(".")[0]
            assert top not in OLD_NAMES, f"{ast.unparse(node)}: {top} is no longer importable"
            if top == "myapp":
                assert f"{module.replace('.', '/')}.py" in FILES, f"{module} is not in the README"
            elif top == "runstream":
                imported = importlib.import_module(module)
                for name in names:
                    assert hasattr(imported, name), f"{module} has no {name}"
            else:
                assert importlib.util.find_spec(top) is not None, f"{top} is not installed"


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name or str(block.position))
def test_every_python_block_is_formatted_and_lint_clean(block: Block) -> None:
    assert_formatted_and_lint_clean(block.text)


# -- the examples, run against a real server and the README's worker command ---------------------


@dataclass
class Folder:
    """A user's folder with the README's files, and the environment its commands run in."""

    path: Path
    server: ServerProcess
    env: dict[str, str]


def stop_group(process: subprocess.Popen[bytes], signal_number: int) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal_number)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    """The README's files in a fresh folder, a server, and the README's worker command."""
    path = tmp_path_factory.mktemp("user-folder")
    (path / "myapp").mkdir()
    (path / "myapp" / "__init__.py").write_text("")
    for name, block in FILES.items():
        (path / name).write_text(block.text)
    server = start_server(path / "instance")
    env = example_env(path, server.url)
    command = readme_command("runstream worker ")
    log_path = path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "runstream.server", *command[1:]],
            cwd=path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while b"worker: running" not in log_path.read_bytes():
            assert worker.poll() is None, f"the worker exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the worker did not start:\n{log_path.read_text()}"
            time.sleep(0.05)
        yield Folder(path, server, env)
    finally:
        code = stop_group(worker, signal.SIGTERM)
        server.stop()
    assert code == 0, f"the worker exited with {code}:\n{log_path.read_text()}"


@pytest.mark.parametrize("script", ["watch.py", "watch_sync.py"])
def test_a_script_prints_what_the_readme_says(folder: Folder, script: str) -> None:
    ran = subprocess.run(
        [sys.executable, script],
        cwd=folder.path,
        env=folder.env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == expected_output(script)


# -- the embedding example: the user's own app.py -----------------------------------------------


APP_CHECK = """
import json
import flask
import app

client = app.app.test_client()
asked = client.get("/")
page = client.get(asked.headers.get("Location", "/"))
print(json.dumps({
    "file": app.__file__,
    "flask": isinstance(app.app, flask.Flask),
    "asked": asked.status_code,
    "location": asked.headers.get("Location", ""),
    "page": page.status_code,
    "spa": '<div id="app">' in page.get_data(as_text=True),
}))
"""


def test_the_users_own_app_py_imports_as_app_and_its_page_route_triggers_a_run(
    folder: Folder,
) -> None:
    """``import app`` in the user's folder is the user's app.py, not part of Runstream: its
    Flask app exists, ``/`` triggers a run on the live server and redirects to the page."""
    ran = subprocess.run(
        [sys.executable, "-c", APP_CHECK],
        cwd=folder.path,
        env=folder.env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(ran.stdout.splitlines()[-1])
    assert Path(result["file"]).resolve() == (folder.path / "app.py").resolve()
    assert result["flask"]
    assert result["asked"] == 302
    assert re.fullmatch(r"/answers/run_\w+\?token=[\w.-]+", result["location"]), result
    assert result["page"] == 200 and result["spa"], result


def page_text(url: str, *, until: str) -> str:
    """The ReactPy updates of the page at ``url`` (its websocket) until one contains ``until``."""
    updates: list[str] = []
    with connect(url, open_timeout=10) as websocket:
        deadline = time.monotonic() + SCRIPT_TIMEOUT
        while time.monotonic() < deadline:
            update = websocket.recv(timeout=max(deadline - time.monotonic(), 0.1))
            updates.append(str(update))
            if until in str(update):
                return str(update)
    raise AssertionError(f"the page never showed {until!r}:\n" + "\n".join(updates))


def test_the_readme_gunicorn_command_serves_app_py_and_its_page_streams_the_answer(
    folder: Folder,
) -> None:
    """The README's gunicorn command serves the user's app.py; the page it redirects to shows
    the run's answer as ``use_realtime_stream`` reads it from the Runstream server with the
    run's public access token, until the stream is done. Without a token it reads nothing."""
    command = readme_command("gunicorn ")
    assert command[-1] == "app:app"
    port = free_port()
    bind = command.index("--bind") + 1
    command[bind] = f"127.0.0.1:{port}"
    log_path = folder.path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *command[1:]],
            cwd=folder.path,
            env=folder.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{log_path.read_text()}"
            try:
                asked = httpx.get(base + "/", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"no answer:\n{log_path.read_text()}"
                time.sleep(0.1)
        assert asked.status_code == 302, asked.text
        location = asked.headers["location"]
        assert httpx.get(base + location, timeout=10).status_code == 200

        done = page_text(f"ws://127.0.0.1:{port}/_reactpy/stream{location}", until="done")
        assert ANSWER in done

        run_id = location.split("?")[0].removeprefix("/answers/")
        no_token = page_text(f"ws://127.0.0.1:{port}/_reactpy/stream/answers/{run_id}", until="Ask")
        assert ANSWER not in no_token
    finally:
        stop_group(process, signal.SIGINT)
