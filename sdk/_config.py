"""Where the SDK finds the server, and with which credential.

``configure()`` sets them for the whole process; unset values come from ``RUNSTREAM_API_URL``
(default ``http://127.0.0.1:8787``) and ``RUNSTREAM_SECRET_KEY``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_API_URL = "http://127.0.0.1:8787"


@dataclass(frozen=True)
class ClientSettings:
    api_url: str
    secret_key: str | None

    @property
    def websocket_url(self) -> str:
        if self.api_url.startswith("https://"):
            return "wss://" + self.api_url.removeprefix("https://")
        return "ws://" + self.api_url.removeprefix("http://")

    def headers(self, access_token: str | None = None) -> dict[str, str]:
        """The credential of a request: the access token when one is given — even an empty
        one, which is then no credential at all — else the secret key. A page that hands a
        missing token on must never read with the server's own key."""
        credential = access_token if access_token is not None else self.secret_key
        return {"Authorization": f"Bearer {credential}"} if credential else {}


_configured: ClientSettings | None = None


def configure(api_url: str | None = None, secret_key: str | None = None) -> None:
    """Point the SDK at a Runstream server. Values left out come from the environment."""
    global _configured
    _configured = ClientSettings(
        api_url=(api_url or os.environ.get("RUNSTREAM_API_URL") or DEFAULT_API_URL).rstrip("/"),
        secret_key=secret_key or os.environ.get("RUNSTREAM_SECRET_KEY") or None,
    )


def settings() -> ClientSettings:
    if _configured is None:
        configure()
    assert _configured is not None
    return _configured
