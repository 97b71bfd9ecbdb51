"""Runs, for asyncio code: ``retrieve`` (at once, or once the run changes), ``cancel``, and
waiting for a run to end.

:class:`RunSource` is what a reader of runs is, for the ReactPy run hooks: this module's HTTP
calls, or a Runstream server's own runs read in-process (kept in ``app.extensions`` under
:data:`LOCAL_RUN_SOURCE`), so that the hooks depend on this small interface and nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import _api
from ._config import ClientSettings, settings

if TYPE_CHECKING:
    from .tasks import TriggeredRun

FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELED"})
# The longest a retrieve may wait for a change: below the SDK's 30 s read timeout per request.
MAX_WAIT_SECONDS = 20
# A Flask application that serves runs in-process (a Runstream server) keeps its RunSource in
# ``app.extensions[LOCAL_RUN_SOURCE]``; run hooks rendered inside it read and trigger through it.
LOCAL_RUN_SOURCE = "runstream.run_source"


@dataclass(frozen=True)
class RunStream:
    key: str
    chunk_count: int
    bytes: int
    closed: bool


@dataclass(frozen=True)
class Run:
    id: str
    task_id: str
    status: str
    payload: Any
    output: Any
    error: Any
    parent_run_id: str | None
    root_run_id: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    streams: tuple[RunStream, ...] = ()
    child_run_ids: tuple[str, ...] = ()
    # When the run last changed, its worker's heartbeats included: what a wait for a change
    # starts from. Left out of comparisons, so two reads of an unchanged run are equal.
    updated_at: str | None = field(default=None, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(
            id=data["id"],
            task_id=data["task_id"],
            status=data["status"],
            payload=data.get("payload"),
            output=data.get("output"),
            error=data.get("error"),
            parent_run_id=data.get("parent_run_id"),
            root_run_id=data["root_run_id"],
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            streams=tuple(RunStream(**stream) for stream in data.get("streams", ())),
            child_run_ids=tuple(data.get("child_run_ids", ())),
            updated_at=data.get("updated_at"),
        )


class RunSource(Protocol):
    """Reads runs and triggers tasks, with a given credential (``access_token``)."""

    async def retrieve(
        self, run_id: str, *, access_token: str | None, after: str | None, wait_in_seconds: int
    ) -> Run:
        """The run, once its ``updated_at`` is not ``after`` or ``wait_in_seconds`` passed."""
        ...

    async def trigger(
        self, task_id: str, payload: Any, *, access_token: str | None
    ) -> TriggeredRun: ...


async def retrieve(
    run_id: str,
    *,
    access_token: str | None = None,
    base_url: str | None = None,
    after: str | None = None,
    wait_in_seconds: int = 0,
) -> Run:
    """The run's status, payload, output or error, parent and root ids, and its streams.

    With ``after`` (a :attr:`Run.updated_at` seen before), the server answers once the run has
    changed since, or after ``wait_in_seconds`` (at most 20) with the run as it is: a live
    view of a run without polling. ``access_token`` reads with a public access token instead
    of the secret key; ``base_url`` reads from that server instead of the configured one.
    """
    if not 0 <= wait_in_seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"wait_in_seconds must be from 0 to {MAX_WAIT_SECONDS}")
    params: dict[str, Any] = {}
    if after is not None:
        params = {"after": after, "wait": wait_in_seconds}
    return Run.from_json(
        await _api.call(
            "GET",
            f"/api/v1/runs/{run_id}",
            params=params,
            access_token=access_token,
            config=settings_for(base_url),
        )
    )


def settings_for(base_url: str | None) -> ClientSettings:
    """The configured server, or the one at ``base_url`` (with the configured secret key)."""
    config = settings()
    return config if base_url is None else ClientSettings(base_url.rstrip("/"), config.secret_key)


async def cancel(run_id: str) -> Run:
    """Cancel a run that has not ended yet; its worker stops it at its next heartbeat."""
    return Run.from_json(await _api.call("POST", f"/api/v1/runs/{run_id}/cancel"))


async def wait_until_finished(run_id: str, *, poll_interval: float = 0.25) -> Run:
    """Wait until the run reaches COMPLETED, FAILED or CANCELED, and return it."""
    delay = 0.05
    while True:
        run = await retrieve(run_id)
        if run.is_final:
            return run
        await asyncio.sleep(delay)
        delay = min(delay * 2, poll_interval)
