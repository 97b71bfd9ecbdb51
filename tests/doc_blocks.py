"""The code blocks of a Markdown page (the README, docs/hooks.md), read as their readers copy
them: the language, the text, and the file a block is when its first line names one."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
FENCED = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SHELLS = ("sh", "bash", "shell")


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    position: int  # where the block starts in its page

    @property
    def name(self) -> str | None:
        """The file a block is, from a first line such as ``# myapp/tasks.py``."""
        first = self.text.splitlines()[0] if self.text else ""
        found = re.fullmatch(r"# ([\w/]+\.py)", first.strip())
        return found.group(1) if found else None


def blocks_of(page: str) -> list[Block]:
    return [Block(match.group(1), match.group(2), match.start()) for match in FENCED.finditer(page)]


def files_of(blocks: list[Block]) -> dict[str, Block]:
    """The Python blocks that name a file, by that name."""
    return {block.name: block for block in blocks if block.language == "python" and block.name}


def shell_command(blocks: list[Block], prefix: str, page: str) -> list[str]:
    """The page's one shell line that starts with ``prefix``, split into words (without a
    trailing ``&`` or comment)."""
    lines = [
        line.strip()
        for block in blocks
        if block.language in SHELLS
        for line in block.text.splitlines()
        if line.strip().startswith(prefix)
    ]
    assert len(lines) == 1, f"{page} should have one `{prefix}…` command, has {lines}"
    return shlex.split(lines[0].split(" #")[0].strip().removesuffix("&"))


def assert_formatted_and_lint_clean(source: str) -> None:
    """``source`` as ruff, with the repository's settings, would leave it."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the test extras)")
    for arguments in (["format", "--diff"], ["check", "--no-cache"]):
        ran = subprocess.run(
            [sys.executable, "-m", "ruff", *arguments, "--stdin-filename", "example.py", "-"],
            input=source,
            capture_output=True,
            text=True,
            cwd=ROOT,  # the repository's ruff settings: line length 100, its lint rules
            timeout=30,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr


def example_env(folder: Path, server_url: str) -> dict[str, str]:
    """The environment a page's commands run in, in the folder its files were written to: the
    folder importable, and the server's address and secret key as a worker would be given."""
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "RUNSTREAM_API_URL": server_url,
        "RUNSTREAM_SECRET_KEY": SECRET_KEY,
    }
