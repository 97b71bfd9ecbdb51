"""Splitting JSON request bodies into messages, and joining messages into a read response."""

from __future__ import annotations

import json

import pytest

from runstream.server.core.errors import Invalid
from runstream.server.core.json_messages import join_messages, split_messages


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        pytest.param(b'{"a": 1}', [b'{"a": 1}'], id="object"),
        pytest.param(b'"text"', [b'"text"'], id="string"),
        pytest.param(b"42", [b"42"], id="number"),
        pytest.param(b"true", [b"true"], id="true"),
        pytest.param(b"null", [b"null"], id="null"),
        pytest.param(b"  \n\t{}\r\n ", [b"{}"], id="surrounding-whitespace-dropped"),
    ],
)
def test_a_value_that_is_not_an_array_is_one_message(body: bytes, messages: list[bytes]) -> None:
    assert split_messages(body) == messages


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        pytest.param(b"[1,2,3]", [b"1", b"2", b"3"], id="numbers"),
        pytest.param(
            b'[{"a":1}, "two", [3, 4], null]',
            [b'{"a":1}', b'"two"', b"[3, 4]", b"null"],
            id="mixed",
        ),
        pytest.param(b"[[1,2],[3,4]]", [b"[1,2]", b"[3,4]"], id="only-one-level-flattened"),
        pytest.param(b"[[[1]]]", [b"[[1]]"], id="deeply-nested"),
        pytest.param(b" [ 1 ,\n 2 ] ", [b"1", b"2"], id="whitespace-between"),
        pytest.param(b"[]", [], id="empty-array"),
        pytest.param(b" [ \n ] ", [], id="empty-array-with-whitespace"),
    ],
)
def test_an_array_is_flattened_one_level(body: bytes, messages: list[bytes]) -> None:
    assert split_messages(body) == messages


@pytest.mark.parametrize(
    "text",
    [
        '{"b": 2,   "a": 1}',  # key order and spacing
        '{"n": 1.0, "e": 1E+2, "z": -0}',  # number spellings
        '"caf\\u00e9 \\ud83d\\ude00"',  # escapes stay escapes
        '"café 😀"',  # UTF-8 stays UTF-8
        '{"dup": 1, "dup": 2}',
        '{"line": "a\\nb"}',
    ],
)
def test_messages_keep_the_exact_text_sent(text: str) -> None:
    """Messages are stored as sent, not re-encoded: the same bytes come back."""
    raw = text.encode("utf-8")

    assert split_messages(raw) == [raw]
    assert split_messages(b"[" + raw + b", " + raw + b"]") == [raw, raw]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"  \n ", id="only-whitespace"),
        pytest.param(b"{ invalid json }", id="invalid-object"),
        pytest.param(b"{", id="unterminated-object"),
        pytest.param(b"[1, 2", id="unterminated-array"),
        pytest.param(b"[", id="bare-bracket"),
        pytest.param(b'"open string', id="unterminated-string"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"[1, NaN]", id="nan-in-array"),
        pytest.param(b"Infinity", id="infinity"),
        pytest.param(b'{"x": -Infinity}', id="minus-infinity-nested"),
        pytest.param(b"[1,]", id="trailing-comma"),
        pytest.param(b'{"a": 1,}', id="trailing-comma-object"),
        pytest.param(b"[,1]", id="leading-comma"),
        pytest.param(b"[1 2]", id="missing-comma"),
        pytest.param(b"{} {}", id="two-values"),
        pytest.param(b"1 2", id="two-numbers"),
        pytest.param(b"[1] x", id="garbage-after-array"),
        pytest.param(b'{"a":1}garbage', id="garbage-after-object"),
        pytest.param(b"[1]]", id="extra-bracket"),
        pytest.param(b"01", id="leading-zero"),
        pytest.param(b"'single'", id="single-quotes"),
        pytest.param(b'"a\nb"', id="raw-newline-in-string"),
        pytest.param(b"\xff\xfe1", id="not-utf8"),
        pytest.param(b"undefined", id="undefined"),
    ],
)
def test_invalid_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(Invalid) as error:
        split_messages(body)

    assert "not valid JSON" in error.value.message


def test_join_makes_one_array_that_parses_back_to_the_messages() -> None:
    messages = split_messages(b'[{"a": 1}, [2, 3], "four", null]') + split_messages(b"5")

    joined = join_messages(messages)

    assert joined == b'[{"a": 1},[2, 3],"four",null,5]'
    assert json.loads(joined) == [{"a": 1}, [2, 3], "four", None, 5]
    assert join_messages([]) == b"[]"
