"""A wheel that works: built from this repository, installed the way a new user installs it.

The wheel is built from a copy of the repository (building in place would write ``build/`` and
rewrite ``runstream.egg-info`` in the working tree), installed with its dependencies into a fresh
virtual environment, and used from an unrelated, empty folder: the documented imports, the
``runstream serve`` command, its static files and its instance folder.

The wheel, the virtual environment and the server are built or started once for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as (pyproject.toml's package-dir).
SOURCE_FOLDERS: dict[str, str] = {
    "sdk": "runstream",
    "app": "runstream/server",
    "components": "runstream/components",
    "static": "runstream/static",
}
PIP_TIMEOUT = 300.0
START_TIMEOUT = 60.0
# Left out of the copy the wheel is built from: what a build or a test run leaves behind.
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "instance",
    ".venv",
    "node_modules",
    "test-results",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".benchmarks",
)
# pip's words for a package index it could not reach.
NETWORK_FAILURES = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "No matching distribution found for setuptools",  # the build's own requirement
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    python: Path
    command: Path  # <venv>/bin/runstream
    site_packages: Path
    base: Path  # the module's temporary folder

    def empty_folder(self, name: str) -> Path:
        """A new, empty folder outside the repository, the venv and each other."""
        folder = self.base / name
        folder.mkdir()
        return folder


@dataclass(frozen=True)
class Served:
    url: str
    cwd: Path
    log: Path
    venv_before: frozenset[str]  # the venv's files before the server started

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def user_environment() -> dict[str, str]:
    """The environment of a new user: nothing of this repository, its venv or Runstream."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RUNSTREAM_")
        and key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(
    command: list[str | Path], *, cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess[str], lines: int = 40) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join(text[-lines:])


def run_pip(command: list[str | Path], *, cwd: Path, what: str, installs_from_index: bool) -> None:
    """Run pip. Skip when it could not get what it needed from the package index: on any
    failure of an install from the index (but for a dependency conflict, which is a defect of
    the wheel's requirements), and on a build only when the index was unreachable. Anything
    else fails the test: a wheel that does not build is a defect."""
    try:
        result = run(command, cwd=cwd, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{what}: could not install dependencies in {PIP_TIMEOUT:.0f} s (network?)")
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    unreachable = any(marker in output for marker in NETWORK_FAILURES)
    conflict = "ResolutionImpossible" in output or "conflicting dependencies" in output
    if unreachable or (installs_from_index and not conflict):
        pytest.skip(
            f"{what}: could not install dependencies (pip exit code {result.returncode}):\n"
            f"{output_of(result, 10)}"
        )
    pytest.fail(f"{what} failed (pip exit code {result.returncode}):\n{output_of(result)}")


def files_under(root: Path) -> set[str]:
    """Every file and folder below ``root``, except Python's byte-code caches."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (gunicorn's master and worker), then SIGKILL."""
    for signal_number, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this repository, installed with its dependencies into a fresh venv."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED, symlinks=True)
    wheels = base / "wheels"
    # An absolute path: pip reads a bare word as the name of a package on the index.
    run_pip(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, source.resolve()],
        cwd=base,
        what="building the wheel",
        installs_from_index=False,
    )
    [wheel] = wheels.glob("runstream-*.whl")

    venv = base / "venv"
    created = run([sys.executable, "-m", "venv", venv], cwd=base)
    assert created.returncode == 0, f"python -m venv failed:\n{output_of(created)}"
    python = venv / "bin" / "python"
    run_pip(
        [python, "-m", "pip", "install", wheel],
        cwd=base,
        what="installing the wheel",
        installs_from_index=True,
    )
    found = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base)
    site_packages = Path(found.stdout.strip())
    assert site_packages.is_dir() and site_packages.is_relative_to(venv), output_of(found)
    return Installed(wheel, venv, python, venv / "bin" / "runstream", site_packages, base)


def run_python(installed: Installed, script: str, folder: str) -> object:
    """Run ``script`` with the venv's Python in a new empty folder; it prints one JSON value."""
    result = run([installed.python, "-c", script], cwd=installed.empty_folder(folder))
    assert result.returncode == 0, f"the script failed:\n{output_of(result)}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_wheel_holds_every_file_of_the_source_folders(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    expected = {
        f"{package}/{path.relative_to(REPO_ROOT / folder).as_posix()}"
        for folder, package in SOURCE_FOLDERS.items()
        for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert {"runstream/py.typed", "runstream/server/db/migrations/script.py.mako"} <= expected
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"runstream"}


def test_the_documented_imports_work_from_an_unrelated_folder(installed: Installed) -> None:
    script = """if True:
        import json
        from runstream import streams, task, runs, auth, configure
        from runstream.sync import streams, runs, auth
        from runstream.components import use_realtime_stream, StreamView
        from runstream.server import create_app
        import runstream, runstream.components, runstream.server, runstream.sync
        print(json.dumps({module.__name__: module.__file__ for module in
            [runstream, runstream.sync, runstream.components, runstream.server]}))
    """
    files = run_python(installed, script, "imports")
    assert isinstance(files, dict) and len(files) == 4
    for module, file in files.items():
        assert Path(file).is_relative_to(installed.site_packages), f"{module} is {file}"


def test_the_repository_folders_are_not_importable(installed: Installed) -> None:
    script = """if True:
        import importlib, json
        found = {}
        for name in ["app", "sdk", "components"]:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as error:
                found[name] = "ModuleNotFoundError" if error.name == name else repr(error)
            else:
                found[name] = f"imported from {module.__file__}"
        print(json.dumps(found))
    """
    found = run_python(installed, script, "not-importable")
    assert found == dict.fromkeys(["app", "sdk", "components"], "ModuleNotFoundError")


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("runstream", ["flask", "sqlalchemy", "alembic", "jwt"]),
        ("runstream.sync", ["flask", "sqlalchemy", "alembic", "jwt"]),
        ("runstream.components", ["sqlalchemy", "alembic", "jwt", "runstream.server"]),
    ],
    ids=["runstream", "runstream.sync", "runstream.components"],
)
def test_importing_does_not_pull_in_the_server(
    installed: Installed, module: str, forbidden: list[str]
) -> None:
    script = f"""if True:
        import json, sys
        import {module}
        print(json.dumps(sorted(
            name for name in sys.modules
            if any(name == f or name.startswith(f + ".") for f in {forbidden!r})
        )))
    """
    loaded = run_python(installed, script, f"light-{module}")
    assert loaded == [], f"import {module} also imported {loaded}"


@pytest.fixture(scope="module")
def served(installed: Installed) -> Iterator[Served]:
    """``runstream serve`` from the venv, in a new empty folder, on a free port."""
    cwd = installed.empty_folder("serve")
    log = installed.base / "serve.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    venv_before = frozenset(files_under(installed.venv))
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(installed.command), "serve", "--port", str(port)],
            cwd=cwd,
            env=user_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(url, cwd, log, venv_before)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"runstream serve exited with {process.returncode}:\n{served.output()}")
            try:
                httpx.head(f"{url}/v1/stream/x", timeout=2.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"runstream serve did not answer in time:\n{served.output()}")
                time.sleep(0.1)
        yield served
    finally:
        stop(process)


@pytest.mark.parametrize("name", ["runstream.css", "runstream.js"])
def test_the_server_serves_the_static_files(served: Served, name: str) -> None:
    response = httpx.get(f"{served.url}/static/{name}", timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.content == (REPO_ROOT / "static" / name).read_bytes()


def test_the_dashboard_answers(served: Served) -> None:
    response = httpx.get(f"{served.url}/runs", timeout=10.0)
    if response.is_redirect:
        assert response.headers["location"].startswith("/login"), response.headers
        login = httpx.get(f"{served.url}{response.headers['location']}", timeout=10.0)
        assert login.status_code == 200 and "secret_key" in login.text
    else:
        assert response.status_code == 200, response.text


def test_the_server_stores_a_stream_with_the_generated_key(served: Served) -> None:
    key = (served.cwd / "instance" / "secret_key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stream = f"{served.url}/v1/stream/packaging-check"
    with httpx.Client(timeout=10.0) as client:
        assert client.put(stream, headers=auth).status_code == 201
        assert client.post(stream, headers=auth, content=b'[{"a": 1}, 2]').status_code in (
            200,
            204,
        )
        read = client.get(stream, params={"offset": "-1"}, headers=auth)
        assert read.status_code == 200 and read.json() == [{"a": 1}, 2]
        assert client.get(stream, params={"offset": "-1"}).status_code == 401


# Last: it also checks that nothing the server did before wrote inside the venv.
def test_the_instance_folder_is_in_the_working_directory(
    served: Served, installed: Installed
) -> None:
    instance = served.cwd / "instance"
    secret_key = instance / "secret_key"
    assert secret_key.is_file(), served.output()
    assert (instance / "runstream.sqlite3").is_file(), sorted(files_under(served.cwd))
    assert str(secret_key) in served.output()
    created = sorted(files_under(installed.venv) - served.venv_before)
    assert not created, f"the server created files inside the venv: {created}"
    # Where Flask puts an installed package's instance folder unless told otherwise.
    assert not (installed.venv / "var").exists()
