"""The runs API over HTTP, for the SDK's asyncio core.

One ``httpx.AsyncClient`` per event loop, so that connections are reused and never shared
between loops (the blocking face of the SDK runs its own loop).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx

from ._config import ClientSettings, settings
from .errors import ApiError

__all__ = ["ApiError", "call", "raise_for_error"]

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10))
        _clients[loop] = client
    return client


async def call(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    access_token: str | None = None,
    config: ClientSettings | None = None,
) -> Any:
    """Send one API request; the decoded JSON answer, or :class:`ApiError` with the server's
    explanation."""
    config = config or settings()
    response = await _client().request(
        method,
        config.api_url + path,
        json=body,
        params=params,
        headers=config.headers(access_token),
    )
    raise_for_error(response)
    return response.json()


def raise_for_error(response: httpx.Response) -> None:
    """Raise :class:`ApiError` with the server's explanation unless the response succeeded."""
    if response.is_success:
        return
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise ApiError(response.status_code, str(message))
