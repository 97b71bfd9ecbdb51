"""Splitting a JSON-mode request body into messages without re-encoding them.

A JSON stream stores each message as the exact text the client sent. A body that is a JSON array
is one batch: it is flattened by exactly one level, each element becoming a message. Any other
JSON value is a single message.

Every JSON text a client sends (a stream's messages, a runs API body, a websocket frame) is
decoded here, and held to what every reader of it can decode again: no NaN or Infinity, no
number that overflows a double (``1e999`` would read back as infinity), no integer longer than
Python converts, no lone surrogate (``"\\ud800"`` is no Unicode text, and breaks any reader that
encodes it as UTF-8), and no nesting deeper than :data:`MAX_DEPTH` (a value nested about a
thousand levels deep is more than Python's own decoder and encoders can recurse into: stored,
it would break every reader that decodes it, such as the dashboard).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import Invalid, TooLarge

_WHITESPACE = " \t\n\r"
# How deeply a JSON value may nest arrays and objects: far more than data needs, and far less
# than the about 1000 levels where Python's decoder and encoders give up.
MAX_DEPTH = 64
# What a refusal of a lone surrogate says, whether the decoder or the check found it.
LONE_SURROGATE = "a string holds a lone surrogate (such as \\ud800), which is no Unicode character"
# Python converts no longer integer text (``sys.get_int_max_str_digits()``'s default).
MAX_INTEGER_DIGITS = 4300


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return number


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(
            f"an integer of {digits} digits is longer than the {MAX_INTEGER_DIGITS} digits "
            "this server converts"
        )
    return int(text)


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
)


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError if a decoded value nests deeper than ``max_depth`` levels of arrays and
    objects, or holds a string (or key) with a lone surrogate.

    Iterative, so that it cannot itself run out of stack on what it refuses.
    """
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(LONE_SURROGATE) from None
            continue
        if isinstance(item, dict):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > max_depth:
            raise ValueError(f"it nests arrays and objects more than {max_depth} levels deep")
        pending.extend((child, depth) for child in children if not _is_plain(child))


def _is_plain(value: Any) -> bool:
    """Nothing to check in it: a number, true, false, null or an ASCII string."""
    return not isinstance(value, str | list | dict) or (isinstance(value, str) and value.isascii())


def _decode(text: str, index: int, max_depth: int) -> tuple[Any, int]:
    """Decode one JSON value at ``index``; ValueError for anything :func:`check_value`
    refuses, and for nesting too deep for Python's decoder itself.

    The walk of :func:`check_value` over the decoded value, which for a batch of small
    messages cost more than decoding them, runs only where the text could hold a lone
    surrogate: only a ``\\u`` escape can make one (text decoded from UTF-8 holds none).
    Otherwise the depth is told from the text's brackets alone (:func:`_nests_deeper`).
    """
    try:
        value, end = _decoder.raw_decode(text, index)
    except RecursionError:
        raise ValueError(f"it nests arrays and objects more than {max_depth} levels deep") from None
    if text.find("\\u", index, end) != -1:
        check_value(value, max_depth)
    elif text.count("[", index, end) + text.count("{", index, end) > max_depth and _nests_deeper(
        text[index:end], max_depth
    ):
        raise ValueError(f"it nests arrays and objects more than {max_depth} levels deep")
    return value, end


_strings = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_not_brackets = re.compile(r"[^\[\]{}]+")
_innermost_pairs = re.compile(r"\[\]|\{\}")


def _nests_deeper(text: str, max_depth: int) -> bool:
    """Whether valid JSON ``text`` nests arrays and objects more than ``max_depth`` levels
    deep, told by C-speed passes over its brackets: with strings taken out, each pass removes
    the innermost level, so text of depth d is gone after d passes."""
    brackets = _not_brackets.sub("", _strings.sub("", text))
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = _innermost_pairs.sub("", brackets)
    return bool(brackets)


def split_messages(body: bytes, *, max_messages: int | None = None) -> list[bytes]:
    """The messages of a JSON body; raises :class:`Invalid` when it is not valid JSON, and
    :class:`TooLarge` as soon as it holds more than ``max_messages`` messages (before the rest
    of a huge batch is decoded)."""
    try:
        text = body.decode("utf-8")
        return [part.encode("utf-8") for part in _split(text, max_messages)]
    except (UnicodeDecodeError, ValueError) as error:
        raise Invalid(f"the body is not valid JSON: {error}") from None


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _split(text: str, max_messages: int | None) -> list[str]:
    index = _skip_whitespace(text, 0)
    if index == len(text):
        raise ValueError("the body is empty")
    if text[index] != "[":
        _, end = _decode(text, index, MAX_DEPTH)
        if _skip_whitespace(text, end) != len(text):
            raise ValueError(f"unexpected data after the JSON value at character {end}")
        return [text[index:end]]

    messages: list[str] = []
    index = _skip_whitespace(text, index + 1)
    if index < len(text) and text[index] == "]":
        index += 1
    else:
        while True:
            if max_messages is not None and len(messages) >= max_messages:
                raise TooLarge(
                    f"the body holds more than {max_messages} messages, the most one append "
                    "may carry: send them in several appends"
                )
            _, end = _decode(text, index, MAX_DEPTH)
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


def parse_strict(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON that will be encoded again, held to what the module's docstring says.

    Python's json module would accept NaN, Infinity and overflowing numbers and write them back
    as text that is not JSON. ``max_depth`` counts the levels of the whole text: a websocket
    frame, whose chunks sit two levels down, allows two more than a chunk may have.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        elif not text.isascii():
            text.encode("utf-8")  # a lone surrogate of a str not decoded here raises
        value, end = _decode(text, _skip_whitespace(text, 0), max_depth)
        if _skip_whitespace(text, end) != len(text):
            raise ValueError(f"unexpected data after the JSON value at character {end}")
        return value
    except UnicodeEncodeError:
        raise Invalid(f"not valid JSON: {LONE_SURROGATE}") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise Invalid(f"not valid JSON: {error}") from None


def join_messages(messages: list[bytes]) -> bytes:
    """A JSON-mode read response: the messages as one JSON array."""
    return b"[" + b",".join(messages) + b"]"
