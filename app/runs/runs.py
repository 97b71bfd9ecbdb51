"""Runs: one execution of a task, from trigger to a final status.

A run is ``QUEUED`` when triggered, ``EXECUTING`` once a worker claims it, and ends
``COMPLETED``, ``FAILED`` or ``CANCELED``. Claiming is one transaction that moves queued runs to
``EXECUTING`` under the claiming worker's name, so two workers never claim the same run
(PostgreSQL skips rows another claim has locked; SQLite has one writer at a time).

When a run reaches a final status, the listeners registered with :meth:`Runs.on_finish` are told;
that is how a run's streams learn that their run has ended.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)

from runstream.identifiers import check_run_id, check_task_id

from ..core.clock import format_timestamp, utcnow
from ..core.errors import Conflict, Invalid, NotFound
from ..db import is_sqlite, reading, writing
from ..db.models import Run, Stream, UTCDateTime

runs_table = cast(Table, Run.__table__)
streams_table = cast(Table, Stream.__table__)
# A run's streams are at runs/<run_id>/<key> (see .run_streams); run ids hold no "/", so in
# byte order they all sort after "runs/<run_id>/" and before "runs/<run_id>0" ("0" follows "/").
STREAM_PREFIX = "runs/"
# The hub topic on which every change of a run (triggered, claimed, ended) is announced, once it
# commits: run pages, the runs list and the runs API's long-poll wait on it (create_app wires it).
RUNS_TOPIC = "runs"

MAX_PAGE_SIZE = 100


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)


@dataclass(frozen=True)
class RunRecord:
    id: str
    task_id: str
    status: RunStatus
    payload: Any
    output: Any
    error: Any
    parent_run_id: str | None
    root_run_id: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    heartbeat_at: datetime | None

    @classmethod
    def columns(cls) -> list[Any]:
        return [runs_table.c[field.name] for field in fields(cls)]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RunRecord:
        values = dict(zip((field.name for field in fields(cls)), row, strict=True))
        values["status"] = RunStatus(values["status"])
        for name in ("payload", "output", "error"):
            text = values[name]
            values[name] = json.loads(text) if text is not None else None
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "status": self.status.value,
            "payload": self.payload,
            "output": self.output,
            "error": self.error,
            "parent_run_id": self.parent_run_id,
            "root_run_id": self.root_run_id,
            "created_at": _timestamp(self.created_at),
            "updated_at": _timestamp(self.updated_at),
            "started_at": _timestamp(self.started_at),
            "finished_at": _timestamp(self.finished_at),
            "duration_ms": self.duration_ms,
        }

    @property
    def duration_ms(self) -> int | None:
        return _duration_ms(self.started_at, self.finished_at)


@dataclass(frozen=True)
class RunSummary:
    """What a list of runs shows of each: no payload, output or error, which may be megabytes
    each and are shown on the run's own page only; and how many live streams the run has."""

    id: str
    task_id: str
    status: RunStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stream_count: int

    @property
    def duration_ms(self) -> int | None:
        return _duration_ms(self.started_at, self.finished_at)


@dataclass(frozen=True)
class RunPage:
    runs: list[RunRecord]
    next_cursor: str | None


class Runs:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._finish_listeners: list[Callable[[RunRecord], None]] = []
        self._change_listeners: list[Callable[[RunRecord], None]] = []

    def on_finish(self, listener: Callable[[RunRecord], None]) -> None:
        """Call ``listener`` with every run that reaches a final status, after it commits."""
        self._finish_listeners.append(listener)

    def on_change(self, listener: Callable[[RunRecord], None]) -> None:
        """Call ``listener`` with every run that is triggered, claimed or ends."""
        self._change_listeners.append(listener)

    # -- creating and reading ----------------------------------------------------------------

    def trigger(self, task_id: str, payload: Any, parent_run_id: str | None = None) -> RunRecord:
        check_task_id(task_id)
        now = utcnow()
        run_id = "run_" + secrets.token_hex(12)
        with writing(self.engine) as conn:
            root_run_id = run_id
            if parent_run_id is not None:
                parent = self._get(conn, check_run_id(parent_run_id))
                root_run_id = parent.root_run_id
            conn.execute(
                insert(runs_table).values(
                    id=run_id,
                    task_id=task_id,
                    status=RunStatus.QUEUED.value,
                    payload=json.dumps(payload),
                    parent_run_id=parent_run_id,
                    root_run_id=root_run_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            run = self._get(conn, run_id)
        self._changed(run)
        return run

    def get(self, run_id: str) -> RunRecord:
        with reading(self.engine) as conn:
            return self._get(conn, check_run_id(run_id))

    def children(self, run_id: str) -> list[RunRecord]:
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(*RunRecord.columns())
                .where(runs_table.c.parent_run_id == run_id)
                .order_by(runs_table.c.created_at, runs_table.c.id)
            ).all()
        return [RunRecord.from_row(row) for row in rows]

    def child_ids(self, run_id: str) -> list[str]:
        """The ids of the run's children, oldest first: what a run's page links to (their
        payloads are theirs to show)."""
        with reading(self.engine) as conn:
            return list(
                conn.execute(
                    select(runs_table.c.id)
                    .where(runs_table.c.parent_run_id == run_id)
                    .order_by(runs_table.c.created_at, runs_table.c.id)
                ).scalars()
            )

    def page(
        self,
        *,
        status: str | None = None,
        task_id: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> RunPage:
        """Runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise Invalid(f"limit must be from 1 to {MAX_PAGE_SIZE}, not {limit}")
        query = select(*RunRecord.columns())
        if status is not None:
            query = query.where(runs_table.c.status == _status(status).value)
        if task_id is not None:
            query = query.where(runs_table.c.task_id == task_id)
        with reading(self.engine) as conn:
            if cursor is not None:
                after = self._get(conn, check_run_id(cursor, what="cursor"))
                query = query.where(
                    or_(
                        runs_table.c.created_at < after.created_at,
                        and_(
                            runs_table.c.created_at == after.created_at,
                            runs_table.c.id < after.id,
                        ),
                    )
                )
            rows = conn.execute(
                query.order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc()).limit(
                    limit + 1
                )
            ).all()
        found = [RunRecord.from_row(row) for row in rows]
        more = len(found) > limit
        found = found[:limit]
        return RunPage(found, found[-1].id if more else None)

    def summaries(
        self, *, status: str | None = None, task_contains: str = "", limit: int = 50
    ) -> list[RunSummary]:
        """The newest ``limit`` runs, with their counts of live streams, in one query: what
        the dashboard's list of runs shows. ``task_contains`` keeps the runs whose task id
        contains it, whatever its case (``%`` and ``_`` in it are plain characters)."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise Invalid(f"limit must be from 1 to {MAX_PAGE_SIZE}, not {limit}")
        query = select(
            runs_table.c.id,
            runs_table.c.task_id,
            runs_table.c.status,
            runs_table.c.created_at,
            runs_table.c.started_at,
            runs_table.c.finished_at,
        )
        if status is not None:
            query = query.where(runs_table.c.status == _status(status).value)
        if task_contains:
            escaped = task_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(runs_table.c.task_id.ilike(f"%{escaped}%", escape="\\"))
        listed = (
            query.order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit)
            .subquery("listed")
        )
        counted = select(
            *listed.c, self._live_stream_count(listed.c.id).label("stream_count")
        ).order_by(listed.c.created_at.desc(), listed.c.id.desc())
        with reading(self.engine) as conn:
            rows = conn.execute(counted).all()
        return [
            RunSummary(
                id=row.id,
                task_id=row.task_id,
                status=RunStatus(row.status),
                created_at=row.created_at,
                started_at=row.started_at,
                finished_at=row.finished_at,
                stream_count=row.stream_count,
            )
            for row in rows
        ]

    def _live_stream_count(self, run_id: ColumnElement[str]) -> ColumnElement[int]:
        """How many live streams (neither deleted nor expired) the run ``run_id`` has: a count
        of a range of the streams' unique path index, compared in byte order."""
        path: ColumnElement[str] = streams_table.c.path
        if not is_sqlite(self.engine):
            path = path.collate("C")  # byte order, whatever the database's collation
        now = utcnow()
        return (
            select(func.count())
            .where(
                path > literal(STREAM_PREFIX) + run_id + "/",
                path < literal(STREAM_PREFIX) + run_id + "0",
                streams_table.c.deleted.is_(False),
                or_(streams_table.c.expires_at.is_(None), streams_table.c.expires_at > now),
                or_(
                    streams_table.c.retention_seconds.is_(None),
                    self._still_within(
                        streams_table.c.written_at, streams_table.c.retention_seconds, now
                    ),
                ),
                or_(
                    streams_table.c.ttl_seconds.is_(None),
                    self._still_within(
                        streams_table.c.touched_at, streams_table.c.ttl_seconds, now
                    ),
                ),
            )
            .scalar_subquery()
        )

    def _still_within(
        self, start: ColumnElement[datetime], seconds: ColumnElement[int], now: datetime
    ) -> ColumnElement[bool]:
        """``start + seconds`` is still ahead of ``now``: SQL for the store's expiry rule
        (``StreamRow.is_expired``), in each database's own date arithmetic."""
        if is_sqlite(self.engine):
            moment = literal(now, UTCDateTime())
            return func.julianday(start) + seconds / 86400.0 > func.julianday(moment)
        return start + seconds * literal_column("interval '1 second'") > now

    # -- the worker's side -------------------------------------------------------------------

    def claim(self, worker_id: str, task_ids: Sequence[str], limit: int = 1) -> list[RunRecord]:
        """Move up to ``limit`` of the oldest queued runs of these tasks to this worker."""
        if not worker_id:
            raise Invalid("worker_id must not be empty")
        if not task_ids:
            raise Invalid("task_ids must name at least one task")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise Invalid(f"limit must be from 1 to {MAX_PAGE_SIZE}, not {limit}")
        now = utcnow()
        with writing(self.engine) as conn:
            query = (
                select(runs_table.c.id)
                .where(
                    runs_table.c.status == RunStatus.QUEUED.value,
                    runs_table.c.task_id.in_(list(task_ids)),
                )
                .order_by(runs_table.c.created_at, runs_table.c.id)
                .limit(limit)
            )
            if not is_sqlite(self.engine):
                query = query.with_for_update(skip_locked=True)
            claimed = list(conn.execute(query).scalars())
            if not claimed:
                return []
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id.in_(claimed))
                .values(
                    status=RunStatus.EXECUTING.value,
                    worker_id=worker_id,
                    started_at=now,
                    heartbeat_at=now,
                    updated_at=now,
                )
            )
            runs = [self._get(conn, run_id) for run_id in claimed]
        for run in runs:
            self._changed(run)
        return runs

    def heartbeat(self, run_id: str, worker_id: str) -> RunRecord:
        """Tell the server the worker still executes the run; the answer carries its status,
        so a worker learns here that its run was canceled."""
        now = utcnow()
        with writing(self.engine) as conn:
            run = self._held(conn, run_id, worker_id, allow_final=True)
            if run.status.is_final:
                return run
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run.id)
                .values(heartbeat_at=now, updated_at=now)
            )
            return self._get(conn, run.id)

    def complete(self, run_id: str, worker_id: str, output: Any) -> RunRecord:
        return self._finish(run_id, worker_id, RunStatus.COMPLETED, output=output)

    def fail(self, run_id: str, worker_id: str, error: Any) -> RunRecord:
        return self._finish(run_id, worker_id, RunStatus.FAILED, error=error)

    def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run that has not ended; canceling an ended run changes nothing."""
        with writing(self.engine) as conn:
            run = self._get(conn, check_run_id(run_id), lock=True)
            if run.status.is_final:
                return run
            finished = self._set_final(conn, run.id, RunStatus.CANCELED)
        self._announce(finished)
        return finished

    def fail_lost_runs(self, heartbeat_timeout: float) -> list[RunRecord]:
        """Fail executing runs whose worker has not sent a heartbeat for ``heartbeat_timeout``
        seconds: the worker is gone, and running the task again could repeat its effects."""
        cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
        failed = []
        with writing(self.engine) as conn:
            # Lock the lost runs, so that a worker completing one of them right now waits and
            # then finds it ended, instead of both ending it.
            query = select(runs_table.c.id).where(
                runs_table.c.status == RunStatus.EXECUTING.value,
                runs_table.c.heartbeat_at < cutoff,
            )
            if not is_sqlite(self.engine):
                query = query.with_for_update(skip_locked=True)
            lost = conn.execute(query).scalars()
            for run_id in list(lost):
                error = {
                    "name": "WorkerLost",
                    "message": f"the worker sent no heartbeat for {heartbeat_timeout:g} seconds",
                }
                failed.append(self._set_final(conn, run_id, RunStatus.FAILED, error=error))
        for run in failed:
            self._announce(run)
        return failed

    def _finish(
        self,
        run_id: str,
        worker_id: str,
        status: RunStatus,
        *,
        output: Any = None,
        error: Any = None,
    ) -> RunRecord:
        with writing(self.engine) as conn:
            run = self._held(conn, run_id, worker_id, allow_final=False)
            finished = self._set_final(conn, run.id, status, output=output, error=error)
        self._announce(finished)
        return finished

    def _set_final(
        self,
        conn: Connection,
        run_id: str,
        status: RunStatus,
        *,
        output: Any = None,
        error: Any = None,
    ) -> RunRecord:
        now = utcnow()
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(
                status=status.value,
                output=json.dumps(output) if output is not None else None,
                error=json.dumps(error) if error is not None else None,
                finished_at=now,
                updated_at=now,
            )
        )
        return self._get(conn, run_id)

    def _announce(self, run: RunRecord) -> None:
        for listener in self._finish_listeners:
            listener(run)
        self._changed(run)

    def _changed(self, run: RunRecord) -> None:
        for listener in self._change_listeners:
            listener(run)

    # -- rows --------------------------------------------------------------------------------

    def _get(self, conn: Connection, run_id: str, *, lock: bool = False) -> RunRecord:
        query = select(*RunRecord.columns()).where(runs_table.c.id == run_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"run {run_id!r} does not exist")
        return RunRecord.from_row(row)

    def _held(
        self, conn: Connection, run_id: str, worker_id: str, *, allow_final: bool
    ) -> RunRecord:
        """The run, which ``worker_id`` must be executing."""
        run = self._get(conn, check_run_id(run_id), lock=True)
        if run.worker_id != worker_id:
            raise Conflict(
                f"run {run.id} is not executed by worker {worker_id!r}"
                + (f" but by {run.worker_id!r}" if run.worker_id else "; it was never claimed")
            )
        if run.status.is_final and not allow_final:
            raise Conflict(f"run {run.id} has already ended: it is {run.status.value}")
        return run


def _status(value: str) -> RunStatus:
    try:
        return RunStatus(value.upper())
    except ValueError:
        names = ", ".join(status.value for status in RunStatus)
        raise Invalid(f"unknown status {value!r}: use one of {names}") from None


def _duration_ms(started_at: datetime | None, finished_at: datetime | None) -> int | None:
    """How long a run ran, in milliseconds: until now while it runs; None before it starts."""
    if started_at is None:
        return None
    end = finished_at or utcnow()
    return int((end - started_at).total_seconds() * 1000)


def _timestamp(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None
