"""What names a run, a task and a stream: the one definition the server and the SDK share.

A run id is ``run_`` and up to 60 letters and digits; a task id and a stream key are up to 128
letters, digits and a few punctuation marks, starting with a letter or a digit. A stream
without a key is the ``default`` stream of its run. Each ``check_*`` returns the value when it
is valid and raises :class:`InvalidIdentifier` (a ``ValueError``) saying what to use instead.
"""

from __future__ import annotations

import re

DEFAULT_KEY = "default"

RUN_ID = re.compile(r"run_[A-Za-z0-9]{1,60}")
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
STREAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidIdentifier(ValueError):
    """A run id, task id or stream key that is not well formed."""


def is_run_id(value: str) -> bool:
    return RUN_ID.fullmatch(value) is not None


def check_run_id(value: str, *, what: str = "run id") -> str:
    if not is_run_id(value):
        raise InvalidIdentifier(
            f"invalid {what} {value[:80]!r}: run ids look like run_ followed by letters and digits"
        )
    return value


def check_task_id(value: str) -> str:
    return _check(TASK_ID, value, "task id", ". _ : -")


def check_stream_key(value: str) -> str:
    return _check(STREAM_KEY, value, "stream key", ". _ -")


def _check(pattern: re.Pattern[str], value: str, what: str, punctuation: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidIdentifier(
            f"invalid {what} {value[:80]!r}: use up to 128 letters, digits and {punctuation}, "
            "starting with a letter or digit"
        )
    return value
