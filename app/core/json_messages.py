"""Splitting a JSON-mode request body into messages without re-encoding them.

A JSON stream stores each message as the exact text the client sent. A body that is a JSON array
is one batch: it is flattened by exactly one level, each element becoming a message. Any other
JSON value is a single message.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import Invalid

_WHITESPACE = " \t\n\r"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def split_messages(body: bytes) -> list[bytes]:
    """The messages of a JSON body; raises :class:`Invalid` when it is not valid JSON."""
    try:
        text = body.decode("utf-8")
        return [part.encode("utf-8") for part in _split(text)]
    except (UnicodeDecodeError, ValueError) as error:
        raise Invalid(f"the body is not valid JSON: {error}") from None


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _split(text: str) -> list[str]:
    index = _skip_whitespace(text, 0)
    if index == len(text):
        raise ValueError("the body is empty")
    if text[index] != "[":
        _, end = _decoder.raw_decode(text, index)
        if _skip_whitespace(text, end) != len(text):
            raise ValueError(f"unexpected data after the JSON value at character {end}")
        return [text[index:end]]

    messages: list[str] = []
    index = _skip_whitespace(text, index + 1)
    if index < len(text) and text[index] == "]":
        index += 1
    else:
        while True:
            _, end = _decoder.raw_decode(text, index)
            messages.append(text[index:end])
            index = _skip_whitespace(text, end)
            if index < len(text) and text[index] == ",":
                index = _skip_whitespace(text, index + 1)
                continue
            if index < len(text) and text[index] == "]":
                index += 1
                break
            raise ValueError(f"expected ',' or ']' at character {index}")
    if _skip_whitespace(text, index) != len(text):
        raise ValueError(f"unexpected data after the JSON array at character {index}")
    return messages


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text} is too large for a double")
    return number


_strict_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_strict(text: str | bytes) -> Any:
    """Decode JSON that will be encoded again: no NaN or Infinity, no number that overflows.

    Python's json module would accept both and write them back as text that is not JSON.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value, end = _strict_decoder.raw_decode(text, _skip_whitespace(text, 0))
        if _skip_whitespace(text, end) != len(text):
            raise ValueError(f"unexpected data after the JSON value at character {end}")
        return value
    except (UnicodeDecodeError, ValueError) as error:
        raise Invalid(f"not valid JSON: {error}") from None


def join_messages(messages: list[bytes]) -> bytes:
    """A JSON-mode read response: the messages as one JSON array."""
    return b"[" + b",".join(messages) + b"]"
