"""Public access tokens: read-only credentials to hand to browsers and other untrusted code."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ._api import raise_for_error
from ._config import settings


def create_public_token(
    *, read_runs: Sequence[str] | bool = True, expiration: str | int = "1h"
) -> str:
    """A token that may read the given runs (``read_runs=[run_id, ...]``), or every run
    (``read_runs=True``), until ``expiration`` (``"15m"``, ``"1h"``, ``"7d"`` or seconds).

    Minted by the server with the secret key. This is one short blocking HTTP call, in both
    the asyncio and the blocking API.
    """
    if read_runs is True:
        scopes = ["read:runs"]
    elif read_runs is False or not read_runs:
        raise ValueError("read_runs must be True or a list of run ids")
    else:
        scopes = [f"read:runs:{run_id}" for run_id in read_runs]
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
