"""The Runs service: triggering, claiming, keeping, finishing and listing runs.

Every test runs on SQLite and, when RUNSTREAM_TEST_DATABASE_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event

from runstream.identifiers import InvalidIdentifier
from runstream.server.core.errors import Conflict, Invalid, NotFound
from runstream.server.core.store import CreateRequest, Store
from runstream.server.db import is_sqlite
from runstream.server.runs.runs import RunRecord, Runs, RunStatus


@pytest.fixture
def runs(engine: Engine) -> Runs:
    return Runs(engine)


def claim_one(runs: Runs, task_id: str, worker_id: str = "worker-1") -> RunRecord:
    """Trigger a run of ``task_id`` and claim it as ``worker_id``."""
    run = runs.trigger(task_id, {"n": 1})
    claimed = runs.claim(worker_id, [task_id])
    assert [found.id for found in claimed] == [run.id]
    return claimed[0]


# -- trigger ---------------------------------------------------------------------------------


def test_trigger_queues_a_run_with_its_payload(runs: Runs) -> None:
    """A triggered run has a run_<hex> id, is QUEUED, keeps its payload and is its own root."""
    payload = {"prompt": "hello", "numbers": [1, 2.5, None], "nested": {"ok": True}}

    run = runs.trigger("ai.summarize", payload)

    assert re.fullmatch(r"run_[0-9a-f]+", run.id)
    assert run.status is RunStatus.QUEUED
    assert run.task_id == "ai.summarize"
    assert run.payload == payload
    assert run.parent_run_id is None
    assert run.root_run_id == run.id
    assert run.worker_id is None
    assert run.started_at is None
    assert run.finished_at is None
    assert runs.get(run.id) == run


def test_trigger_ids_are_unique(runs: Runs) -> None:
    ids = {runs.trigger("task", None).id for _ in range(20)}

    assert len(ids) == 20


def test_child_run_gets_its_parents_root(runs: Runs) -> None:
    """A child's root is its parent's root, however deep the tree."""
    root = runs.trigger("parent", {})
    child = runs.trigger("child", {}, parent_run_id=root.id)
    grandchild = runs.trigger("grandchild", {}, parent_run_id=child.id)

    assert child.parent_run_id == root.id
    assert child.root_run_id == root.id
    assert grandchild.parent_run_id == child.id
    assert grandchild.root_run_id == root.id
    assert [run.id for run in runs.children(root.id)] == [child.id]


def test_trigger_with_an_unknown_parent_is_not_found(runs: Runs) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        runs.trigger("child", {}, parent_run_id="run_0123456789abcdef")

    assert runs.page().runs == []


@pytest.mark.parametrize("task_id", ["", "has space", "-leading-dash", "x" * 129, "a/b"])
def test_trigger_with_a_bad_task_id_is_a_bad_request(runs: Runs, task_id: str) -> None:
    with pytest.raises(InvalidIdentifier, match="invalid task id"):
        runs.trigger(task_id, {})

    assert runs.page().runs == []


def test_get_of_a_bad_or_unknown_run_id(runs: Runs) -> None:
    with pytest.raises(InvalidIdentifier, match="invalid run id"):
        runs.get("not-a-run")
    with pytest.raises(NotFound):
        runs.get("run_ffffffff")


# -- claim -----------------------------------------------------------------------------------


def test_claim_takes_the_oldest_queued_runs_of_the_named_tasks(runs: Runs) -> None:
    """Claim skips other tasks' runs, takes the oldest first, and marks them EXECUTING."""
    first_a = runs.trigger("a", 1)
    runs.trigger("b", 2)
    first_c = runs.trigger("c", 3)
    second_a = runs.trigger("a", 4)

    claimed = runs.claim("worker-1", ["a", "c"], limit=2)

    assert [run.id for run in claimed] == [first_a.id, first_c.id]
    for run in claimed:
        assert run.status is RunStatus.EXECUTING
        assert run.worker_id == "worker-1"
        assert run.started_at is not None
        assert run.heartbeat_at is not None
        assert runs.get(run.id) == run
    assert runs.get(second_a.id).status is RunStatus.QUEUED
    assert [run.id for run in runs.claim("worker-2", ["a", "c"], limit=5)] == [second_a.id]
    assert runs.claim("worker-3", ["a", "c"]) == []


def test_claim_never_takes_a_run_twice(runs: Runs) -> None:
    run = runs.trigger("once", None)

    assert [found.id for found in runs.claim("w1", ["once"])] == [run.id]
    assert runs.claim("w2", ["once"]) == []
    assert runs.get(run.id).worker_id == "w1"


@pytest.mark.parametrize(
    ("worker_id", "task_ids", "limit"),
    [("", ["a"], 1), ("w", [], 1), ("w", ["a"], 0), ("w", ["a"], 101)],
)
def test_claim_refuses_bad_arguments(
    runs: Runs, worker_id: str, task_ids: list[str], limit: int
) -> None:
    runs.trigger("a", None)

    with pytest.raises(Invalid):
        runs.claim(worker_id, task_ids, limit)

    assert runs.page(status="QUEUED").runs[0].task_id == "a"


def test_concurrent_claims_take_every_run_exactly_once(runs: Runs) -> None:
    """Eight workers claiming at once from 30 queued runs share them out without overlap
    (on PostgreSQL this is SELECT ... FOR UPDATE SKIP LOCKED)."""
    queued = {runs.trigger("batch", {"n": n}).id for n in range(30)}
    start = threading.Barrier(8)

    def work(worker: int) -> list[str]:
        start.wait(10)
        mine: list[str] = []
        while True:
            claimed = runs.claim(f"worker-{worker}", ["batch"], limit=2)
            if not claimed:
                return mine
            mine.extend(run.id for run in claimed)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8), timeout=60))

    every_claim = [run_id for claimed in results for run_id in claimed]
    assert Counter(every_claim).most_common(1)[0][1] == 1
    assert set(every_claim) == queued
    for worker, claimed in enumerate(results):
        for run_id in claimed:
            run = runs.get(run_id)
            assert run.status is RunStatus.EXECUTING
            assert run.worker_id == f"worker-{worker}"
    assert runs.page(status="QUEUED").runs == []


# -- heartbeat, complete, fail ---------------------------------------------------------------


def test_heartbeat_moves_the_heartbeat_and_reports_the_status(runs: Runs) -> None:
    run = claim_one(runs, "beat")
    time.sleep(0.01)

    beat = runs.heartbeat(run.id, "worker-1")

    assert beat.status is RunStatus.EXECUTING
    assert beat.heartbeat_at is not None and run.heartbeat_at is not None
    assert beat.heartbeat_at > run.heartbeat_at


def test_another_worker_cannot_heartbeat_complete_or_fail(runs: Runs) -> None:
    """Only the worker that claimed a run may keep or finish it; the run is unchanged."""
    run = claim_one(runs, "guarded", worker_id="owner")

    with pytest.raises(Conflict, match="not executed by worker 'intruder' but by 'owner'"):
        runs.heartbeat(run.id, "intruder")
    with pytest.raises(Conflict, match="intruder"):
        runs.complete(run.id, "intruder", {"stolen": True})
    with pytest.raises(Conflict, match="intruder"):
        runs.fail(run.id, "intruder", {"message": "no"})

    assert runs.get(run.id) == run


def test_a_queued_run_cannot_be_completed(runs: Runs) -> None:
    run = runs.trigger("unclaimed", None)

    with pytest.raises(Conflict, match="never claimed"):
        runs.complete(run.id, "worker-1", None)

    assert runs.get(run.id).status is RunStatus.QUEUED


def test_complete_stores_the_output_and_twice_is_a_conflict(runs: Runs) -> None:
    run = claim_one(runs, "finish")

    done = runs.complete(run.id, "worker-1", {"answer": 42})

    assert done.status is RunStatus.COMPLETED
    assert done.output == {"answer": 42}
    assert done.finished_at is not None
    assert done.duration_ms is not None and done.duration_ms >= 0
    with pytest.raises(Conflict, match="already ended: it is COMPLETED"):
        runs.complete(run.id, "worker-1", {"answer": 43})
    with pytest.raises(Conflict, match="already ended"):
        runs.fail(run.id, "worker-1", {"message": "late"})
    assert runs.get(run.id) == done


def test_fail_stores_the_error(runs: Runs) -> None:
    run = claim_one(runs, "broken")

    failed = runs.fail(run.id, "worker-1", {"name": "ValueError", "message": "bad input"})

    assert failed.status is RunStatus.FAILED
    assert failed.error == {"name": "ValueError", "message": "bad input"}
    assert failed.output is None
    assert runs.heartbeat(run.id, "worker-1").status is RunStatus.FAILED


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_a_queued_run(runs: Runs) -> None:
    run = runs.trigger("later", None)

    canceled = runs.cancel(run.id)

    assert canceled.status is RunStatus.CANCELED
    assert canceled.finished_at is not None
    assert runs.claim("worker-1", ["later"]) == []


def test_cancel_an_executing_run_tells_its_worker_on_heartbeat(runs: Runs) -> None:
    """The worker learns of the cancel from its next heartbeat, and cannot complete the run."""
    run = claim_one(runs, "long")

    canceled = runs.cancel(run.id)
    beat = runs.heartbeat(run.id, "worker-1")

    assert canceled.status is RunStatus.CANCELED
    assert beat.status is RunStatus.CANCELED
    with pytest.raises(Conflict, match="CANCELED"):
        runs.complete(run.id, "worker-1", "done anyway")
    assert runs.get(run.id).status is RunStatus.CANCELED


def test_cancel_of_an_ended_run_changes_nothing(runs: Runs) -> None:
    run = claim_one(runs, "ended")
    done = runs.complete(run.id, "worker-1", "out")

    again = runs.cancel(run.id)

    assert again == done
    assert runs.get(run.id) == done


def test_cancel_of_an_unknown_run_is_not_found(runs: Runs) -> None:
    with pytest.raises(NotFound):
        runs.cancel("run_abc123")


# -- lost workers ----------------------------------------------------------------------------


def test_fail_lost_runs_fails_executing_runs_with_stale_heartbeats(runs: Runs) -> None:
    """Executing runs whose heartbeat is older than the timeout fail with WorkerLost; queued
    runs and runs with a fresh heartbeat are left alone."""
    stale = claim_one(runs, "stale", worker_id="gone")
    fresh = claim_one(runs, "fresh", worker_id="alive")
    queued = runs.trigger("queued", None)
    time.sleep(0.3)
    runs.heartbeat(fresh.id, "alive")

    failed = runs.fail_lost_runs(0.2)

    assert [run.id for run in failed] == [stale.id]
    lost = runs.get(stale.id)
    assert lost.status is RunStatus.FAILED
    assert lost.error["name"] == "WorkerLost"
    assert "0.2 seconds" in lost.error["message"]
    assert runs.get(fresh.id).status is RunStatus.EXECUTING
    assert runs.get(queued.id).status is RunStatus.QUEUED
    assert runs.fail_lost_runs(0.2) == []


def test_a_run_completed_during_the_lost_run_sweep_is_announced_once(
    engine: Engine, runs: Runs, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The worker completes its run just as fail_lost_runs has picked it as lost: the run ends
    once, with one status, and listeners hear of it once.

    The interleaving is forced by completing the run from another thread at the moment the
    sweep is about to mark it failed (between its SELECT and its UPDATE).
    """
    if is_sqlite(engine):
        pytest.skip("SQLite has one writer at a time: the sweep and the completion cannot overlap")
    heard: list[RunStatus] = []
    runs.on_finish(lambda run: heard.append(run.status))
    run = claim_one(runs, "race")
    time.sleep(0.2)
    set_final = runs._set_final
    pool = ThreadPoolExecutor(1)
    completion: list[Future[RunRecord]] = []

    def complete_first(conn: Connection, run_id: str, status: RunStatus, **values: Any) -> Any:
        if not completion:
            completion.append(pool.submit(runs.complete, run_id, "worker-1", "done"))
            # If the sweep holds the run's row lock, the completion waits for it: go on.
            with contextlib.suppress(FutureTimeout):
                completion[0].result(timeout=2)
        return set_final(conn, run_id, status, **values)

    monkeypatch.setattr(runs, "_set_final", complete_first)
    try:
        runs.fail_lost_runs(0.1)
    finally:
        pool.shutdown(wait=True)

    final = runs.get(run.id).status
    assert heard == [final]
    if final is RunStatus.COMPLETED:
        assert completion[0].result().status is RunStatus.COMPLETED
    else:
        assert isinstance(completion[0].exception(), Conflict)


# -- listing ---------------------------------------------------------------------------------


def test_page_lists_newest_first_and_filters(runs: Runs) -> None:
    triggered = [runs.trigger("even" if n % 2 == 0 else "odd", {"n": n}) for n in range(6)]
    runs.claim("worker-1", ["even"], limit=1)  # the oldest even run: triggered[0]

    everything = runs.page()
    evens = runs.page(task_id="even")
    executing = runs.page(status="executing")
    queued_odds = runs.page(status="QUEUED", task_id="odd")

    assert [run.id for run in everything.runs] == [run.id for run in reversed(triggered)]
    assert everything.next_cursor is None
    assert [run.id for run in evens.runs] == [triggered[n].id for n in (4, 2, 0)]
    assert [run.id for run in executing.runs] == [triggered[0].id]
    assert [run.id for run in queued_odds.runs] == [triggered[n].id for n in (5, 3, 1)]
    assert runs.page(task_id="none").runs == []


def test_page_refuses_bad_status_and_limit(runs: Runs) -> None:
    with pytest.raises(Invalid, match="unknown status 'RUNNING'"):
        runs.page(status="RUNNING")
    with pytest.raises(Invalid, match="limit"):
        runs.page(limit=0)
    with pytest.raises(Invalid, match="limit"):
        runs.page(limit=101)
    with pytest.raises(InvalidIdentifier, match="invalid cursor"):
        runs.page(cursor="nonsense")


def test_summaries_list_newest_runs_with_their_live_stream_counts_in_one_query(
    engine: Engine, store: Store
) -> None:
    """What the dashboard's list shows, in one statement however many runs: newest first, with
    each run's live streams counted (not a deleted one, nor another run's whose id it begins)."""
    runs = Runs(engine)
    triggered = [runs.trigger("report", {"n": n}) for n in range(5)]
    first, second = triggered[0].id, triggered[1].id
    for path in (f"runs/{first}/a", f"runs/{first}/b", f"runs/{first}/gone", f"runs/{second}/a"):
        store.create(path, CreateRequest("application/json"))
    store.delete(f"runs/{first}/gone")
    # Paths that share the run id's beginning but belong to no stream of its run.
    store.create(f"runs/{first}x/a", CreateRequest("application/json"))
    store.create(f"runs/{first}-other/a", CreateRequest("application/json"))
    statements: list[str] = []

    def count(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        summaries = runs.summaries()
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert len(statements) == 1
    assert [summary.id for summary in summaries] == [run.id for run in reversed(triggered)]
    counts = {summary.id: summary.stream_count for summary in summaries}
    assert counts == {run.id: {first: 2, second: 1}.get(run.id, 0) for run in triggered}
    assert "payload" not in statements[0]


def test_summaries_filter_by_status_and_by_any_part_of_the_task_id(runs: Runs) -> None:
    """The task filter matches a substring in any case; % and _ in it are plain characters."""
    plain = runs.trigger("ai.Summarize", None)
    underscore = runs.trigger("load_100", None)
    other = runs.trigger("loadX100Y", None)
    runs.claim("worker-1", ["loadX100Y"])

    def listed(**filters: Any) -> list[str]:
        return [summary.id for summary in runs.summaries(**filters)]

    assert listed(task_contains="summ") == [plain.id]
    assert listed(task_contains="SUMMARIZE") == [plain.id]
    assert listed(task_contains="d_1") == [underscore.id]
    assert listed(task_contains="%") == []
    assert listed(task_contains="100") == [other.id, underscore.id]
    assert listed(status="EXECUTING") == [other.id]
    assert listed(status="queued", task_contains="load") == [underscore.id]
    assert listed(limit=1) == [other.id]
    with pytest.raises(Invalid, match="limit"):
        runs.summaries(limit=0)
    with pytest.raises(Invalid, match="unknown status"):
        runs.summaries(status="RUNNING")


def test_cursor_walks_every_run_exactly_once(runs: Runs) -> None:
    triggered = [runs.trigger("walk", {"n": n}).id for n in range(23)]

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = runs.page(cursor=cursor, limit=5)
        pages += 1
        seen.extend(run.id for run in page.runs)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert pages == 5
    assert seen == list(reversed(triggered))


def test_cursor_with_a_filter(runs: Runs) -> None:
    wanted = []
    for n in range(9):
        run = runs.trigger("keep" if n % 3 else "skip", {"n": n})
        if n % 3:
            wanted.append(run.id)

    first = runs.page(task_id="keep", limit=4)
    second = runs.page(task_id="keep", limit=4, cursor=first.next_cursor)

    assert first.next_cursor is not None
    assert second.next_cursor is None
    assert [run.id for run in first.runs + second.runs] == list(reversed(wanted))


# -- listeners -------------------------------------------------------------------------------


def test_on_finish_listeners_hear_each_final_transition_once(runs: Runs) -> None:
    """Complete, fail, cancel and a lost worker each announce the run once; repeated or
    refused transitions announce nothing."""
    heard: list[tuple[str, RunStatus]] = []
    runs.on_finish(lambda run: heard.append((run.id, run.status)))
    also_heard: list[str] = []
    runs.on_finish(lambda run: also_heard.append(run.id))

    completed = claim_one(runs, "complete")
    failed = claim_one(runs, "fail")
    canceled = runs.trigger("cancel", None)
    lost = claim_one(runs, "lost")
    runs.complete(completed.id, "worker-1", 1)
    runs.fail(failed.id, "worker-1", {"message": "x"})
    runs.cancel(canceled.id)
    runs.cancel(canceled.id)
    runs.cancel(completed.id)
    with pytest.raises(Conflict):
        runs.complete(completed.id, "worker-1", 2)
    runs.heartbeat(completed.id, "worker-1")
    time.sleep(0.2)
    runs.fail_lost_runs(0.1)
    runs.fail_lost_runs(0.1)

    assert heard == [
        (completed.id, RunStatus.COMPLETED),
        (failed.id, RunStatus.FAILED),
        (canceled.id, RunStatus.CANCELED),
        (lost.id, RunStatus.FAILED),
    ]
    assert also_heard == [run_id for run_id, _ in heard]


def test_listeners_are_not_told_of_runs_that_have_not_ended(runs: Runs) -> None:
    heard: list[RunRecord] = []
    runs.on_finish(heard.append)

    run = claim_one(runs, "quiet")
    runs.heartbeat(run.id, "worker-1")

    assert heard == []
