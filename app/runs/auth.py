"""Who may do what: the secret key, and public access tokens that can only read.

The secret key (``RUNSTREAM_SECRET_KEY``, or the ``secret_key`` file Runstream creates in its
instance folder) may do everything: trigger runs, write streams, claim and complete runs, mint
tokens. It belongs on servers and workers, never in a browser.

A public access token is a signed JWT that may only read: ``read:runs:<run_id>`` reads one run
and its streams, ``read:runs`` reads every run. It expires. Browsers get these.

Credentials arrive as ``Authorization: Bearer <credential>``, or as a ``token`` query parameter
where a client cannot set headers (browser websockets and EventSource).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import jwt

from runstream.identifiers import is_run_id

from ..core.clock import utcnow
from ..core.errors import Invalid, NotPermitted, Unauthenticated

SECRET_KEY_FILE = "secret_key"
READ_ALL_RUNS = "read:runs"
READ_RUN_PREFIX = "read:runs:"
_DURATION = re.compile(r"([1-9][0-9]*)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_LIFETIME = timedelta(days=365)
ISSUER = "runstream"


@dataclass(frozen=True)
class Principal:
    """The caller of a request, as its credential says."""

    is_secret: bool
    scopes: frozenset[str] = frozenset()

    def can_read_run(self, run_id: str) -> bool:
        return (
            self.is_secret
            or READ_ALL_RUNS in self.scopes
            or READ_RUN_PREFIX + run_id in self.scopes
        )

    def require_all_runs(self) -> None:
        if not (self.is_secret or READ_ALL_RUNS in self.scopes):
            raise NotPermitted(f"listing runs needs the secret key or a token with {READ_ALL_RUNS}")

    def require_secret(self, action: str) -> None:
        if not self.is_secret:
            raise NotPermitted(
                f"{action} needs the secret key; a public access token can only read"
            )

    def require_run(self, run_id: str) -> None:
        if not self.can_read_run(run_id):
            raise NotPermitted(f"this token may not read run {run_id}")


EVERYONE = Principal(is_secret=True)


class Auth:
    def __init__(self, secret_key: str, *, disabled: bool = False) -> None:
        self.secret_key = secret_key
        self.disabled = disabled
        # Tokens are signed with a key derived from the secret key, never with the key itself.
        self._token_key = self.derive_key("public access tokens")

    def derive_key(self, purpose: str) -> bytes:
        """A key for one purpose (signing tokens, dashboard sessions), derived from the secret
        key so that no purpose ever holds the secret key itself."""
        return hmac.new(
            self.secret_key.encode(), f"runstream {purpose}".encode(), hashlib.sha256
        ).digest()

    def is_secret_key(self, credential: str) -> bool:
        """Compare in constant time, so that timing reveals nothing of the key."""
        return hmac.compare_digest(credential.encode(), self.secret_key.encode())

    def create_public_token(self, scopes: Iterable[str], expires_in: timedelta) -> str:
        scopes = sorted(set(scopes))
        if not scopes:
            raise Invalid("a public access token needs at least one scope, such as read:runs")
        for scope in scopes:
            if scope != READ_ALL_RUNS and not (
                scope.startswith(READ_RUN_PREFIX) and is_run_id(scope[len(READ_RUN_PREFIX) :])
            ):
                raise Invalid(f"unknown scope {scope!r}: use read:runs or read:runs:<run id>")
        if not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
            raise Invalid("a token must expire after more than 0 seconds and at most 365 days")
        now = utcnow()
        claims = {"iss": ISSUER, "iat": now, "exp": now + expires_in, "scopes": scopes}
        return jwt.encode(claims, self._token_key, algorithm="HS256")

    def authenticate(self, credential: str | None, remote_addr: str | None) -> Principal:
        """The principal a credential stands for; 401 when it is missing or not valid."""
        if self.disabled:
            if not is_loopback(remote_addr):
                raise NotPermitted(
                    "authentication is disabled on this server, so it serves loopback clients only"
                )
            return EVERYONE
        if not credential:
            raise Unauthenticated(
                "send the secret key or a public access token as 'Authorization: Bearer <token>'"
            )
        if self.is_secret_key(credential):
            return EVERYONE
        try:
            claims = jwt.decode(
                credential,
                self._token_key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired: ask for a new one") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(
                "the credential is neither the secret key nor a valid token"
            ) from None
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            raise Unauthenticated("the access token carries no scopes")
        return Principal(is_secret=False, scopes=frozenset(scopes))


def credential_from(authorization: str | None, token_parameter: str | None) -> str | None:
    """The bearer credential of a request: the Authorization header, else ``?token=``."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return token_parameter or None


def parse_duration(value: str | int) -> timedelta:
    """``"1h"``, ``"15m"``, ``"7d"``, ``"30s"`` or a number of seconds."""
    match = _DURATION.fullmatch(str(value).strip())
    if match is None:
        raise Invalid(
            f"invalid expiration {value!r}: use a number of seconds or a duration such as "
            "15m, 1h or 7d"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def load_or_create_secret_key(instance_path: str) -> tuple[str, str, bool]:
    """The secret key stored in the instance folder, created on first use.

    Returns the key, the file it is in, and whether it was created just now.
    """
    path = os.path.join(instance_path, SECRET_KEY_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            key = file.read().strip()
        if key:
            return key, path, False
    except FileNotFoundError:
        pass
    os.makedirs(instance_path, exist_ok=True)
    key = "rs_sk_" + secrets.token_urlsafe(32)
    # O_EXCL: if another process created the file first, use its key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_secret_key(instance_path)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key, path, True
