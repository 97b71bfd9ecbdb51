"""Who may do what: the secret key, and public access tokens that may do one narrow thing.

The secret key (``RUNSTREAM_SECRET_KEY``, or the ``secret_key`` file Runstream creates in its
instance folder) may do everything: trigger runs, write streams, claim and complete runs, mint
tokens. It belongs on servers and workers, never in a browser.

A public access token is a signed JWT that expires, for browsers. Each of its scopes grants one
thing: ``read:runs:<run_id>`` reads one run and its streams, ``read:runs`` reads every run, and
``trigger:tasks:<task_id>`` triggers runs of one task (a page's "submit" button) and nothing
else: it reads nothing, not even the runs it triggered (the trigger's answer carries a token
that reads the new run).

Credentials arrive as ``Authorization: Bearer <credential>``. A public access token may also
come as a ``token`` query parameter, where a client cannot set headers (browser websockets and
EventSource); the secret key never may: an address is kept in proxies' logs and browsers'
histories, and a key that may do everything must not be.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from runstream.identifiers import InvalidIdentifier, check_task_id, is_run_id

from ..core.clock import utcnow
from ..core.errors import Invalid, NotPermitted, Unauthenticated

SECRET_KEY_FILE = "secret_key"
READ_ALL_RUNS = "read:runs"
READ_RUN_PREFIX = "read:runs:"
TRIGGER_TASK_PREFIX = "trigger:tasks:"
_DURATION = re.compile(r"([1-9][0-9]*)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_LIFETIME = timedelta(days=365)
ISSUER = "runstream"
# The shortest secret key accepted: enough that it cannot be guessed. The generated ones are
# "rs_sk_" and 43 characters of 32 random bytes.
MIN_SECRET_KEY_LENGTH = 16


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
                f"{action} needs the secret key; a public access token may only read runs "
                f"({READ_RUN_PREFIX}<run id>, {READ_ALL_RUNS}) or trigger a task "
                f"({TRIGGER_TASK_PREFIX}<task id>)"
            )

    def require_run(self, run_id: str) -> None:
        if not self.can_read_run(run_id):
            raise NotPermitted(
                f"reading run {run_id} needs the secret key or a token with "
                f"{READ_RUN_PREFIX}{run_id} or {READ_ALL_RUNS}"
            )

    def require_trigger(self, task_id: str) -> None:
        if not (self.is_secret or TRIGGER_TASK_PREFIX + task_id in self.scopes):
            raise NotPermitted(
                f"triggering task {task_id} needs the secret key or a token with "
                f"{TRIGGER_TASK_PREFIX}{task_id}"
            )


EVERYONE = Principal(is_secret=True)


class Auth:
    def __init__(self, secret_key: str, *, disabled: bool = False) -> None:
        check_secret_key(secret_key, "the secret key")
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
            check_scope(scope)
        if not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
            raise Invalid("a token must expire after more than 0 seconds and at most 365 days")
        now = utcnow()
        # A JWT's times are whole seconds. Rounded down, as PyJWT rounds a datetime, "exp" would
        # make a one-second token expire anywhere between at once and a second later; rounded
        # up, a token lives at least as long as asked (and less than a second more).
        expires = datetime.fromtimestamp(math.ceil((now + expires_in).timestamp()), UTC)
        claims = {"iss": ISSUER, "iat": now, "exp": expires, "scopes": scopes}
        return jwt.encode(claims, self._token_key, algorithm="HS256")

    def authenticate_in_process(self, credential: str | None) -> Principal:
        """The principal of a credential that a component rendered in this server was handed
        (a ReactPy hook), with the same checks as a request's. It has no address of its own:
        its page's request was admitted by the app, which serves loopback clients only when
        authentication is disabled."""
        return EVERYONE if self.disabled else self._principal_of(credential)

    def refuse_secret_key_in_address(self, token_parameter: str | None) -> None:
        """401 when the ``token`` query parameter holds the secret key, whichever credential
        the request also carries: the key is then in the address, which proxies log and
        browsers keep in their history, so the request says so rather than working."""
        if token_parameter and self.is_secret_key(token_parameter.strip()):
            # First what to do: a websocket's close reason keeps the first 123 bytes only.
            raise Unauthenticated(
                "send the secret key as 'Authorization: Bearer <key>', never in the address "
                "(?token=): proxies and browsers keep addresses. ?token= takes public access "
                "tokens only"
            )

    def authenticate(self, credential: str | None, remote_addr: str | None) -> Principal:
        """The principal a credential stands for; 401 when it is missing or not valid."""
        if self.disabled:
            if not is_loopback(remote_addr):
                raise NotPermitted(
                    "authentication is disabled on this server, so it serves loopback clients only"
                )
            return EVERYONE
        return self._principal_of(credential)

    def _principal_of(self, credential: str | None) -> Principal:
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


def check_scope(scope: str) -> None:
    """Refuse a scope that grants nothing known, or names an ill-formed run or task id."""
    if scope == READ_ALL_RUNS:
        return
    if scope.startswith(READ_RUN_PREFIX) and is_run_id(scope[len(READ_RUN_PREFIX) :]):
        return
    if scope.startswith(TRIGGER_TASK_PREFIX):
        try:
            check_task_id(scope[len(TRIGGER_TASK_PREFIX) :])
        except InvalidIdentifier as error:
            raise Invalid(f"scope {scope[:100]!r} names no valid task: {error}") from None
        return
    raise Invalid(
        f"unknown scope {scope[:100]!r}: use {READ_ALL_RUNS}, {READ_RUN_PREFIX}<run id> or "
        f"{TRIGGER_TASK_PREFIX}<task id>"
    )


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


@functools.lru_cache(maxsize=4096)
def is_loopback(address: str | None) -> bool:
    # Asked on every request with authentication disabled; parsing the address each time cost
    # more than the rest of the check. Clients' addresses are few: the cache stays small.
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_secret_key(key: str, source: str, remedy: str = "") -> None:
    """Refuse a secret key short enough to be guessed, naming where it came from (``source``)
    and what to do (``remedy``)."""
    if len(key) < MIN_SECRET_KEY_LENGTH:
        length = "1 character" if len(key) == 1 else f"{len(key)} characters"
        raise ValueError(
            f"{source} is {length} long: a secret key needs at least "
            f"{MIN_SECRET_KEY_LENGTH} characters{remedy}"
        )


def load_or_create_secret_key(instance_path: str) -> tuple[str, str, bool]:
    """The secret key stored in the instance folder, created on first use.

    Returns the key, the file it is in, and whether it was created just now.

    The file appears whole or not at all: the key is written to a file of this process's own,
    then linked to the key file's name, which fails if another process linked its own first (its
    key is then the one used). So a file Runstream made is never empty, even for a moment, and
    an empty one is refused with a clear error: someone emptied it or a copy of it went wrong,
    and a new key made in its place would quietly be one that no worker holds.
    """
    path = os.path.join(instance_path, SECRET_KEY_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            key = file.read().strip()
    except FileNotFoundError:
        pass
    else:
        if not key:
            raise ValueError(
                f"the secret key file {path} is empty: delete it to have a new key made, or "
                "write the server's key in it (or set RUNSTREAM_SECRET_KEY)"
            )
        check_secret_key(
            key,
            f"the secret key in {path}",
            "; delete the file to have a new key made, or write a longer one in it",
        )
        return key, path, False
    os.makedirs(instance_path, exist_ok=True)
    key = "rs_sk_" + secrets.token_urlsafe(32)
    draft = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(key + "\n")
        os.link(draft, path)
    except FileExistsError:
        return load_or_create_secret_key(instance_path)  # another process's key, whole
    finally:
        os.unlink(draft)
    return key, path, True
