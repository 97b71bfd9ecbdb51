"""``use_realtime_run`` and ``use_task_trigger``: in-process inside a Runstream app, and over HTTP
against a real `runstream serve` with real public access tokens; and the runs API's wait for a
run's change (``GET /api/v1/runs/<id>?after=&wait=``) that the remote hook follows a run with.

The hooks are rendered through ``reactpy.core.layout.Layout`` in ``asyncio.run``, as
tests/test_hook.py does; each test component records what every render showed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import AUTH, POSTGRES_URL, REDIS_URL, ServerProcess, reset_postgres, start_server
from layout_support import WAIT, View, app, run, runtime, until
from reactpy import component, html, use_state
from reactpy.core.types import ComponentType, VdomDict

from runstream.components import (
    RealtimeRun,
    TaskTrigger,
    use_realtime_run,
    use_task_trigger,
)
from runstream.errors import ApiError
from runstream.runs import Run
from runstream.server import Runtime
from runstream.server.db import make_engine
from runstream.server.runs.auth import READ_RUN_PREFIX

__all__ = ["app", "runtime"]  # the shared fixtures, used by name below

TASK = "run-hooks-task"
OTHER_TASK = "run-hooks-other"
WORKER = "run-hooks-worker"
# How long the tests give a stopped or disabled hook to (wrongly) show a change.
SETTLE = 0.3


# -- rendering ---------------------------------------------------------------------------------


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


@dataclass
class RunProbe:
    """Every render of a RunViewer: the run and error it showed; on_complete's calls."""

    shown: list[tuple[Run | None, BaseException | None]] = field(default_factory=list)
    completed: list[Run] = field(default_factory=list)
    result: RealtimeRun | None = None
    set_enabled: Callable[[bool], None] | None = None

    @property
    def run(self) -> Run | None:
        return self.shown[-1][0] if self.shown else None

    @property
    def error(self) -> BaseException | None:
        return self.shown[-1][1] if self.shown else None

    @property
    def status(self) -> str | None:
        return None if self.run is None else self.run.status

    def statuses(self) -> list[str]:
        """The statuses shown, each once, in the order they were first shown."""
        seen: list[str] = []
        for shown_run, _ in self.shown:
            if shown_run is not None and shown_run.status not in seen:
                seen.append(shown_run.status)
        return seen


@component
def RunViewer(probe: RunProbe, run_id: str, enabled: bool = True, **options: Any) -> VdomDict:
    is_enabled, set_enabled = use_state(enabled)
    live = use_realtime_run(
        run_id, enabled=is_enabled, on_complete=probe.completed.append, **options
    )
    probe.result, probe.set_enabled = live, set_enabled
    probe.shown.append((live.run, live.error))
    return html.p(live.run.status if live.run else "loading")


@dataclass
class TriggerProbe:
    """Every render of a TriggerButton: what the trigger hook returned then."""

    shown: list[TaskTrigger] = field(default_factory=list)

    @property
    def last(self) -> TaskTrigger:
        assert self.shown, "the component never rendered"
        return self.shown[-1]


@component
def TriggerButton(probe: TriggerProbe, task_id: str, **options: Any) -> VdomDict:
    trigger = use_task_trigger(task_id, **options)
    probe.shown.append(trigger)
    return html.button(
        {"on_click": lambda _event: trigger.submit({"from": "click"})},
        "Triggering…" if trigger.is_loading else "Trigger",
    )


@component
def SwitchableTrigger(
    probe: TriggerProbe, task_id: str, switch: list[Callable[[str], None]], **options: Any
) -> VdomDict:
    """A TriggerButton whose task the test can switch (``switch[0](other_task)``)."""
    task, set_task = use_state(task_id)
    switch[:] = [set_task]
    return TriggerButton(probe, task, **options)


@component
def Row(*children: ComponentType) -> VdomDict:
    return html.div(*children)


# -- in-process: a Runstream app's hooks -------------------------------------------------------


def token(runtime: Runtime, *scopes: str) -> str:
    return runtime.auth.create_public_token(scopes, expires_in=timedelta(hours=1))


def claim(runtime: Runtime, run_id: str) -> None:
    claimed = runtime.runs.claim(WORKER, [TASK])
    assert [claimed_run.id for claimed_run in claimed] == [run_id]


def test_a_run_shows_each_change_live_and_on_complete_is_called_once(runtime: Runtime) -> None:
    run_id = runtime.runs.trigger(TASK, {"prompt": "hi"}).id
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id)):
            await until(lambda: probe.status == "QUEUED", "the queued run shows")
            assert probe.run is not None and probe.run.payload == {"prompt": "hi"}
            assert probe.run.started_at is None and probe.run.output is None
            await off_loop(claim, runtime, run_id)
            await until(lambda: probe.status == "EXECUTING", "the claimed run shows executing")
            assert probe.run is not None and probe.run.started_at is not None
            await off_loop(runtime.runs.complete, run_id, WORKER, {"answer": 42})
            await until(lambda: probe.status == "COMPLETED", "the run shows completed")
            await until(lambda: runtime.hub.listener_count() == 0, "the hook lets go")

    run(scenario)
    assert probe.statuses() == ["QUEUED", "EXECUTING", "COMPLETED"]
    final = probe.run
    assert final is not None and final.output == {"answer": 42} and final.finished_at
    assert final.task_id == TASK and probe.error is None
    assert probe.completed == [final]


def test_a_run_shows_its_streams_as_of_its_last_change(runtime: Runtime) -> None:
    run_id = runtime.runs.trigger(TASK, None).id
    claim(runtime, run_id)
    session = runtime.run_streams.open_writer(run_id, "answer", "w")
    runtime.run_streams.write(run_id, "answer", "w", session.epoch, 0, ["Hel", "lo"])
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id)):
            await until(lambda: probe.status == "EXECUTING", "the run shows")
            assert probe.run is not None
            assert [(s.key, s.chunk_count) for s in probe.run.streams] == [("answer", 2)]

    run(scenario)


def test_a_run_already_final_shows_at_once_and_calls_on_complete_once(runtime: Runtime) -> None:
    run_id = runtime.runs.trigger(TASK, None).id
    runtime.runs.cancel(run_id)
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id)):
            await until(lambda: probe.completed != [], "on_complete is called")
            assert probe.set_enabled is not None
            renders = len(probe.shown)
            probe.set_enabled(False)
            await until(lambda: len(probe.shown) > renders, "the disabled hook renders")
            probe.set_enabled(True)  # enabled again: the final run is not read again
            await asyncio.sleep(SETTLE)
            assert runtime.hub.listener_count() == 0

    run(scenario)
    assert probe.status == "CANCELED"
    assert [completed.status for completed in probe.completed] == ["CANCELED"]


def test_stop_ends_following_the_run(runtime: Runtime) -> None:
    run_id = runtime.runs.trigger(TASK, None).id
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id)):
            await until(lambda: probe.status == "QUEUED", "the run shows")
            await until(lambda: runtime.hub.listener_count() == 1, "the hook waits for news")
            assert probe.result is not None
            probe.result.stop()
            await until(lambda: runtime.hub.listener_count() == 0, "the hook lets go")
            await off_loop(claim, runtime, run_id)
            await asyncio.sleep(SETTLE)
            assert probe.status == "QUEUED"

    run(scenario)
    assert probe.completed == []


def test_disabled_reads_nothing_until_enabled(runtime: Runtime) -> None:
    run_id = runtime.runs.trigger(TASK, None).id
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id, enabled=False)):
            await asyncio.sleep(SETTLE)
            assert probe.run is None and runtime.hub.listener_count() == 0
            assert probe.set_enabled is not None
            probe.set_enabled(True)
            await until(lambda: probe.status == "QUEUED", "the run shows once enabled")

    run(scenario)


def test_in_process_a_token_is_checked_as_the_api_checks_it(runtime: Runtime) -> None:
    """Handed a token, the in-process hook reads only what the token may read."""
    run_id = runtime.runs.trigger(TASK, None).id
    other_id = runtime.runs.trigger(TASK, None).id
    own, others, trigger_only = RunProbe(), RunProbe(), RunProbe()

    async def scenario() -> None:
        async with View(
            Row(
                RunViewer(own, run_id, access_token=token(runtime, READ_RUN_PREFIX + run_id)),
                RunViewer(others, run_id, access_token=token(runtime, READ_RUN_PREFIX + other_id)),
                RunViewer(
                    trigger_only, run_id, access_token=token(runtime, f"trigger:tasks:{TASK}")
                ),
            )
        ):
            await until(lambda: own.status == "QUEUED", "the token's own run shows")
            await until(lambda: others.error is not None, "another run's token is refused")
            await until(lambda: trigger_only.error is not None, "a trigger token is refused")

    run(scenario)
    for refused in (others, trigger_only):
        assert refused.run is None
        assert isinstance(refused.error, ApiError) and refused.error.status == 403
        assert f"read:runs:{run_id}" in refused.error.message


def test_a_run_that_does_not_exist_sets_error(runtime: Runtime) -> None:
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, "run_doesnotexist")):
            await until(lambda: probe.error is not None, "the error shows")

    run(scenario)
    assert isinstance(probe.error, ApiError) and probe.error.status == 404
    assert probe.run is None and probe.completed == []


def test_in_process_trigger_with_a_trigger_token(runtime: Runtime, monkeypatch: Any) -> None:
    """``submit`` triggers a run of the task; ``is_loading`` holds while the trigger is on its
    way; ``handle`` carries the run's id and a token that reads it."""
    release = threading.Event()
    trigger = runtime.runs.trigger

    def held_trigger(*args: Any) -> Any:
        assert release.wait(WAIT)
        return trigger(*args)

    monkeypatch.setattr(runtime.runs, "trigger", held_trigger)
    probe = TriggerProbe()

    async def scenario() -> None:
        button = TriggerButton(probe, TASK, access_token=token(runtime, f"trigger:tasks:{TASK}"))
        async with View(button):
            assert not probe.last.is_loading and probe.last.handle is None
            probe.last.submit({"n": 1})
            await until(lambda: probe.last.is_loading, "the submit shows loading")
            release.set()
            await until(lambda: probe.last.handle is not None, "the handle shows")
            assert not probe.last.is_loading and probe.last.error is None

    run(scenario)
    handle = probe.last.handle
    assert handle is not None
    triggered = runtime.runs.get(handle.id)
    assert (triggered.task_id, triggered.payload) == (TASK, {"n": 1})
    reader = runtime.auth.authenticate(handle.public_access_token, "127.0.0.1")
    assert reader.can_read_run(handle.id) and not reader.can_read_run("run_other")


def test_switching_task_keeps_the_old_tasks_results_out(runtime: Runtime, monkeypatch: Any) -> None:
    """A submit still on its way when the component switches to another task never shows
    with the other task: that one starts idle, and its own handle stays when the old
    submit's run is made later."""
    released = {TASK: threading.Event(), OTHER_TASK: threading.Event()}
    trigger = runtime.runs.trigger

    def held_trigger(task_id: str, *args: Any) -> Any:
        assert released[task_id].wait(WAIT)
        return trigger(task_id, *args)

    monkeypatch.setattr(runtime.runs, "trigger", held_trigger)
    probe = TriggerProbe()
    switch: list[Callable[[str], None]] = []
    both = token(runtime, f"trigger:tasks:{TASK}", f"trigger:tasks:{OTHER_TASK}")

    async def scenario() -> None:
        async with View(SwitchableTrigger(probe, TASK, switch, access_token=both)):
            probe.last.submit({"n": 1})
            await until(lambda: probe.last.is_loading, "the submit shows loading")
            switch[0](OTHER_TASK)
            await until(lambda: not probe.last.is_loading, "the other task shows idle")
            probe.last.submit({"n": 2})
            await until(lambda: probe.last.is_loading, "the other task's submit shows")
            released[OTHER_TASK].set()
            await until(lambda: probe.last.handle is not None, "the other task's run shows")
            released[TASK].set()
            await until(lambda: runtime.runs.page(task_id=TASK).runs != [], "the old run is made")
            await asyncio.sleep(SETTLE)

    run(scenario)
    handle = probe.last.handle
    assert handle is not None and runtime.runs.get(handle.id).task_id == OTHER_TASK
    assert not probe.last.is_loading and probe.last.error is None


@pytest.mark.parametrize(
    ("scopes", "status"),
    [
        ((), 401),
        ((f"trigger:tasks:{OTHER_TASK}",), 403),
        (("read:runs",), 403),
    ],
    ids=["no-token", "another-task", "read-token"],
)
def test_in_process_trigger_is_refused_without_the_scope(
    runtime: Runtime, scopes: tuple[str, ...], status: int
) -> None:
    """In the server, the hook is no way around the scope: the same refusal as the API's,
    and no run is made."""
    access_token = token(runtime, *scopes) if scopes else None
    probe = TriggerProbe()

    async def scenario() -> None:
        async with View(TriggerButton(probe, TASK, access_token=access_token)):
            probe.last.submit({"n": 1})
            await until(lambda: probe.last.error is not None, "the refusal shows")
            await until(lambda: not probe.last.is_loading, "loading ends")

    run(scenario)
    error = probe.last.error
    assert isinstance(error, ApiError) and error.status == status
    if status == 403:
        assert f"trigger:tasks:{TASK}" in error.message
    assert probe.last.handle is None
    assert runtime.runs.page(task_id=TASK, limit=10).runs == []


# -- over HTTP: a UI that is not the Runstream server ------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("run-hooks"))
    yield server
    server.stop()


def remote_token(server: ServerProcess, *scopes: str) -> str:
    with server.client() as client:
        minted = client.post("/api/v1/auth/public-tokens", json={"scopes": list(scopes)})
    assert minted.status_code == 201, minted.text
    value: str = minted.json()["token"]
    return value


def remote_trigger(server: ServerProcess, task: str) -> tuple[str, str]:
    with server.client() as client:
        triggered = client.post(f"/api/v1/tasks/{task}/trigger", json={"payload": {"p": 1}})
    assert triggered.status_code == 201, triggered.text
    return triggered.json()["id"], triggered.json()["public_access_token"]


def remote_claim(server: ServerProcess, task: str) -> None:
    with server.client() as client:
        claimed = client.post("/api/v1/runs/claim", json={"worker_id": WORKER, "task_ids": [task]})
    assert claimed.status_code == 200 and claimed.json()["runs"], claimed.text


def remote_complete(server: ServerProcess, run_id: str, output: Any) -> None:
    with server.client() as client:
        done = client.post(
            f"/api/v1/runs/{run_id}/complete", json={"worker_id": WORKER, "output": output}
        )
    assert done.status_code == 200, done.text


def test_over_http_a_run_is_followed_live_with_its_read_token(remote: ServerProcess) -> None:
    task = "remote-follow"
    run_id, read_token = remote_trigger(remote, task)
    probe = RunProbe()

    async def scenario() -> None:
        viewer = RunViewer(probe, run_id, access_token=read_token, base_url=remote.url)
        async with View(viewer):
            await until(lambda: probe.status == "QUEUED", "the queued run shows")
            await off_loop(remote_claim, remote, task)
            await until(lambda: probe.status == "EXECUTING", "the claimed run shows")
            await off_loop(remote_complete, remote, run_id, "the answer")
            await until(lambda: probe.completed != [], "on_complete is called")
            # on_complete is called as the update is made; the render that shows it follows.
            await until(lambda: probe.status == "COMPLETED", "the completed run shows")

    run(scenario)
    assert probe.statuses() == ["QUEUED", "EXECUTING", "COMPLETED"]
    assert probe.run is not None and probe.run.output == "the answer"
    assert [completed.status for completed in probe.completed] == ["COMPLETED"]


def test_over_http_a_token_for_another_run_is_refused(remote: ServerProcess) -> None:
    run_id, _ = remote_trigger(remote, "remote-refused")
    _, other_token = remote_trigger(remote, "remote-refused")
    probe = RunProbe()

    async def scenario() -> None:
        viewer = RunViewer(probe, run_id, access_token=other_token, base_url=remote.url)
        async with View(viewer):
            await until(lambda: probe.error is not None, "the refusal shows")

    run(scenario)
    assert isinstance(probe.error, ApiError) and probe.error.status == 403
    assert probe.run is None


def test_over_http_trigger_with_a_trigger_token(remote: ServerProcess) -> None:
    task = "remote-trigger"
    trigger_token = remote_token(remote, f"trigger:tasks:{task}")
    own, other = TriggerProbe(), TriggerProbe()

    async def scenario() -> None:
        async with View(
            Row(
                TriggerButton(own, task, access_token=trigger_token, base_url=remote.url),
                TriggerButton(other, "another", access_token=trigger_token, base_url=remote.url),
            )
        ):
            own.last.submit({"question": "why?"})
            other.last.submit({"question": "why?"})
            await until(lambda: own.last.handle is not None, "the handle shows")
            await until(lambda: other.last.error is not None, "the other task is refused")

    run(scenario)
    handle = own.last.handle
    assert handle is not None and not own.last.is_loading
    with httpx.Client(
        base_url=remote.url,
        headers={"Authorization": f"Bearer {handle.public_access_token}"},
        timeout=10,
    ) as reader:
        triggered = reader.get(f"/api/v1/runs/{handle.id}").json()
    assert (triggered["task_id"], triggered["payload"]) == (task, {"question": "why?"})
    error = other.last.error
    assert isinstance(error, ApiError) and error.status == 403
    assert "trigger:tasks:another" in error.message
    assert other.last.handle is None


def test_over_http_trigger_without_a_token_sends_no_credential(remote: ServerProcess) -> None:
    """The process's secret key (RUNSTREAM_SECRET_KEY) is never a visitor's credential."""
    probe = TriggerProbe()

    async def scenario() -> None:
        async with View(TriggerButton(probe, "remote-anonymous", base_url=remote.url)):
            probe.last.submit(None)
            await until(lambda: probe.last.error is not None, "the refusal shows")

    run(scenario)
    assert isinstance(probe.last.error, ApiError) and probe.last.error.status == 401


# -- the runs API's wait for a change -------------------------------------------------------------


def test_a_wait_answers_when_the_run_changes(remote: ServerProcess) -> None:
    """Asked to wait a minute for a change, the request answers when the run is claimed:
    the hub's news wakes it (it would otherwise answer after the full wait, past the guard)."""
    task = "remote-wait"
    run_id, read_token = remote_trigger(remote, task)
    headers = {"Authorization": f"Bearer {read_token}"}
    with httpx.Client(base_url=remote.url, headers=headers, timeout=90) as client:
        before = client.get(f"/api/v1/runs/{run_id}").json()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.get,
                f"/api/v1/runs/{run_id}",
                params={"after": before["updated_at"], "wait": "60"},
            )
            remote_claim(remote, task)
            answer = waiting.result(timeout=WAIT)
    assert answer.status_code == 200
    assert answer.json()["status"] == "EXECUTING"
    assert answer.json()["updated_at"] != before["updated_at"]


def test_a_wait_without_a_change_answers_the_run_as_it_is(remote: ServerProcess) -> None:
    run_id, _ = remote_trigger(remote, "remote-unchanged")
    with remote.client() as client:
        before = client.get(f"/api/v1/runs/{run_id}").json()
        after = client.get(
            f"/api/v1/runs/{run_id}", params={"after": before["updated_at"], "wait": "1"}
        )
        at_once = client.get(f"/api/v1/runs/{run_id}", params={"after": "2000-01-01", "wait": "60"})
    assert after.status_code == 200 and after.json() == before
    assert at_once.status_code == 200 and at_once.json() == before


@pytest.mark.parametrize("wait", ["-1", "61", "1.5", "soon"])
def test_a_bad_wait_is_400(remote: ServerProcess, wait: str) -> None:
    run_id, _ = remote_trigger(remote, "remote-bad-wait")
    with httpx.Client(base_url=remote.url, headers=AUTH, timeout=10) as client:
        answer = client.get(f"/api/v1/runs/{run_id}", params={"after": "x", "wait": wait})
    assert answer.status_code == 400
    assert "wait must be an integer from 0 to 60" in answer.json()["error"]


# -- several server processes: the news of a run crosses the hub ---------------------------------


SPANNING_HUBS = {"redis": REDIS_URL or "", "postgres": ""}


@pytest.fixture(scope="module", params=list(SPANNING_HUBS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B on the emptied PostgreSQL test database, with the Redis hub or
    PostgreSQL's LISTEN/NOTIFY."""
    if not (POSTGRES_URL and REDIS_URL):
        pytest.skip("set RUNSTREAM_TEST_DATABASE_URL and RUNSTREAM_TEST_REDIS_URL to run this")
    engine = make_engine(POSTGRES_URL)
    reset_postgres(engine)
    engine.dispose()
    env = {
        "RUNSTREAM_DATABASE_URL": POSTGRES_URL,
        "RUNSTREAM_REDIS_URL": SPANNING_HUBS[request.param],
    }
    folder = tmp_path_factory.mktemp(f"pair-{request.param}")
    a = start_server(folder / "a", env=env)  # first: it creates the schema
    try:
        b = start_server(folder / "b", env=env)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def test_a_run_followed_through_one_server_shows_what_another_did(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """The hook follows the run through server A while a worker claims and completes it
    through server B: each change wakes A's wait through the hub that spans them."""
    a, b = pair
    task = "pair-follow"
    run_id, read_token = remote_trigger(a, task)
    probe = RunProbe()

    async def scenario() -> None:
        async with View(RunViewer(probe, run_id, access_token=read_token, base_url=a.url)):
            await until(lambda: probe.status == "QUEUED", "the queued run shows")
            await off_loop(remote_claim, b, task)
            await until(lambda: probe.status == "EXECUTING", "the claim through B shows")
            await off_loop(remote_complete, b, run_id, "from b")
            await until(lambda: probe.completed != [], "on_complete is called")
            await until(lambda: probe.status == "COMPLETED", "the completion through B shows")

    run(scenario)
    assert probe.statuses() == ["QUEUED", "EXECUTING", "COMPLETED"]
    assert probe.run is not None and probe.run.output == "from b"
