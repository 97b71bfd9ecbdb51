"""Runs, for asyncio code: ``retrieve``, ``cancel``, and waiting for a run to end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from . import _api

FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELED"})


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
        )


async def retrieve(run_id: str, *, access_token: str | None = None) -> Run:
    """The run's status, payload, output or error, parent and root ids, and its streams."""
    return Run.from_json(
        await _api.call("GET", f"/api/v1/runs/{run_id}", access_token=access_token)
    )


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
