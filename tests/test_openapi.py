"""The HTTP API against its own description (``/openapi.json``), by fuzzing: schemathesis sends
every operation requests made from the description, well-formed and not, to a real server; no
answer may be a 5xx, or one that the description does not allow (status, content type, body).

The examples per operation are bounded for CI (RUNSTREAM_FUZZ_EXAMPLES raises them for a longer
run). The fuzzed server is one of its own: random claims and cancels must not touch the runs of
other tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import AUTH, ServerProcess, start_server
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runstream.server.faces.openapi import description

EXAMPLES = int(os.environ.get("RUNSTREAM_FUZZ_EXAMPLES", "30"))
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance]
# A stream's body is the user's data, in the stream's own content type (a stream of
# application/vnd.x+json is a byte stream, whatever the name says): only JSON answers of the
# runs API and /healthz have schemas to conform to.
SCHEMA_CHECKS = [*CHECKS, response_schema_conformance]

schema = schemathesis.openapi.from_dict(description())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("fuzzed"))
    yield server
    server.stop()


def test_the_server_serves_its_description(fuzzed: ServerProcess, tmp_path: Path) -> None:
    answer = httpx.get(f"{fuzzed.url}/openapi.json")

    assert answer.status_code == 200
    assert answer.json() == description()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_the_description_allows_or_not_is_a_server_error(
    case: schemathesis.Case, fuzzed: ServerProcess
) -> None:
    checks = CHECKS if case.path.startswith("/v1/stream/") else SCHEMA_CHECKS
    case.call_and_validate(base_url=fuzzed.url, headers=AUTH, checks=checks, timeout=30)
