"""What every HTTP face of Runstream does the same way: reading bodies, and who is calling."""

from __future__ import annotations

from flask import request

from ..core.errors import TooLarge
from ..runs.auth import Principal, credential_from
from ..runtime import runtime


def read_body() -> bytes:
    """The request body, refused with 413 when it is over the limit.

    The limit is checked here rather than by Flask's MAX_CONTENT_LENGTH, which cuts a chunked
    body short at the limit without saying so.
    """
    limit = runtime().settings.max_append_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the request body is larger than the limit of {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"the request body is larger than the limit of {limit} bytes")
    return body


def caller() -> Principal:
    """Who makes the current request; 401 without a valid credential, and 401 for the secret
    key in the address (``?token=`` is for public access tokens, which browsers' EventSource
    and websockets can send no other way)."""
    auth = runtime().auth
    token_parameter = request.args.get("token")
    auth.refuse_secret_key_in_address(token_parameter)
    return auth.authenticate(
        credential_from(request.headers.get("Authorization"), token_parameter),
        request.remote_addr,
    )
