"""Public access tokens: narrow credentials to hand to browsers and other untrusted code."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ._api import raise_for_error
from ._config import settings


def create_public_token(
    *,
    read_runs: Sequence[str] | bool | None = None,
    trigger_tasks: Sequence[str] = (),
    expiration: str | int = "1h",
) -> str:
    """A token that may read the given runs (``read_runs=[run_id, ...]``), or every run
    (``read_runs=True``), and trigger runs of the given tasks (``trigger_tasks=[task_id, ...]``)
    — nothing else — until ``expiration`` (``"15m"``, ``"1h"``, ``"7d"`` or seconds).

    Without ``read_runs``, a token that triggers reads nothing, and one that does not trigger
    reads every run (``read_runs=True``, as before ``trigger_tasks`` existed).

    Minted by the server with the secret key. This is one short blocking HTTP call, in both
    the asyncio and the blocking API.
    """
    if isinstance(trigger_tasks, str):
        raise ValueError('trigger_tasks must be a list of task ids, such as ["summarize"]')
    scopes = [f"trigger:tasks:{task_id}" for task_id in trigger_tasks]
    if read_runs is None:
        read_runs = not scopes
    if read_runs is True:
        scopes.append("read:runs")
    elif isinstance(read_runs, str):
        raise ValueError("read_runs must be True or a list of run ids, such as [run_id]")
    elif read_runs:
        scopes += [f"read:runs:{run_id}" for run_id in read_runs]
    if not scopes:
        raise ValueError("the token needs read_runs (True or run ids) or trigger_tasks")
    config = settings()
    response = httpx.post(
        config.api_url + "/api/v1/auth/public-tokens",
        json={"scopes": scopes, "expiration": expiration},
        headers=config.headers(),
        timeout=30,
    )
    raise_for_error(response)
    token: str = response.json()["token"]
    return token
