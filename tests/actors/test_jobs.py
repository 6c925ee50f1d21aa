"""The job shell on a fake adapter: an attempt's events, submit failures as data, a
cancel that overtakes its submission, the active jobs, preparing ahead, adopted jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from adapters.base import JobHandle, JobRequest, SubmitError
from adapters.fake import FakeAdapter
from engine.actors.jobs import JobShell
from engine.machines.recovery import initial_records
from engine.messages import Event, JobExited, JobStarted, SubmitFailed
from engine.spec.graph import StepInstance, StudyGraph
from tests.actors.support import RecordingAdapter, graph, inst

GUARD = 10.0
NOW = 42.0


def shell(ad: FakeAdapter, g: StudyGraph) -> JobShell:
    return JobShell(ad, g, study_id="sid", records=initial_records(g, {}),
                    resolve=lambda n: g.by_name[n], clock=lambda: NOW)


async def collect(events: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in events:
        into.append(event)


async def test_run_submits_with_the_attempt_key_and_yields_started_then_exited() -> None:
    ad = FakeAdapter()
    jobs = shell(ad, graph(inst("a")))
    got: list[Event] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, jobs.run("a", 2, True), got)
            await ad.wait_submitted("a")
            await anyio.wait_all_tasks_blocked()
            assert [JobStarted.match(job_id="101", time=NOW)] == got
            ad.finish("a", 3, attempt=2)
    assert [JobStarted.match(job_id="101"),
            JobExited.match(exit_code=3, outcome="FAILED", time=NOW)] == got
    assert [("sid/a/2", 2, True)] == [(r.key, r.attempt, r.restart) for r in ad.requests]


class RefusingAdapter(FakeAdapter):
    def __init__(self, *, retryable: bool) -> None:
        super().__init__()
        self.retryable = retryable

    async def submit(self, request: JobRequest) -> JobHandle:
        raise SubmitError("controller busy", request.step.name, retryable=self.retryable)


@pytest.mark.parametrize("retryable", [True, False])
async def test_a_submit_error_yields_submit_failed_carrying_retryable(retryable: bool) -> None:
    jobs = shell(RefusingAdapter(retryable=retryable), graph(inst("a")))
    got: list[Event] = []
    with anyio.fail_after(GUARD):
        await collect(jobs.run("a", 1, False), got)
    assert [SubmitFailed.match(detail="controller busy", retryable=retryable)] == got
    assert {} == jobs.active_jobs()


class SlowSubmitAdapter(FakeAdapter):
    """``submit`` returns only once the test sets ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def submit(self, request: JobRequest) -> JobHandle:
        self.entered.set()
        await self.release.wait()
        return await super().submit(request)


async def test_a_cancel_during_submission_is_carried_out_once_the_handle_exists() -> None:
    ad = SlowSubmitAdapter()
    jobs = shell(ad, graph(inst("a")))
    got: list[Event] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, jobs.run("a", 1, False), got)
            await ad.entered.wait()
            await jobs.cancel("a", 1)
            assert ([], []) == (ad.cancelled, got), "nothing to cancel yet"
            ad.release.set()
    assert [("a", 1)] == ad.cancelled
    assert [JobStarted.match(job_id="101"), JobExited.match(exit_code=-15, outcome="CANCELLED")
            ] == got


async def test_active_jobs_lists_the_running_attempts_and_drops_the_ended_ones() -> None:
    ad = FakeAdapter()
    jobs = shell(ad, graph(inst("a"), inst("b")))
    got: dict[str, list[Event]] = {"a": [], "b": []}
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            for name in got:
                tg.start_soon(collect, jobs.run(name, 1, False), got[name])
            await ad.wait_submitted("a")
            await ad.wait_submitted("b")
            await anyio.wait_all_tasks_blocked()
            assert {("a", 1), ("b", 1)} == set(jobs.active_jobs())
            ad.finish("a")
            await anyio.wait_all_tasks_blocked()
            assert [JobExited.match(exit_code=0)] == got["a"][1:]
            assert [("b", 1)] == list(jobs.active_jobs())
            assert "b" == jobs.active_jobs()[("b", 1)].step
            ad.finish("b")
    assert {} == jobs.active_jobs()


async def prepared_while_running(g: StudyGraph, step: str) -> list[str]:
    """What the shell prepared ahead once ``step`` started (then it ends)."""
    ad = RecordingAdapter()
    jobs = shell(ad, g)
    got: list[Event] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, jobs.run(step, 1, False), got)
            await ad.wait_submitted(step)
            await anyio.wait_all_tasks_blocked()
            prepared = list(ad.prepared)
            ad.finish(step)
    return prepared


async def test_a_chains_only_child_is_prepared_while_its_parent_runs() -> None:
    assert ["b"] == await prepared_while_running(graph(inst("a"), inst("b", "a")), "a")


class QuietStart(RecordingAdapter):
    """A worker's short task: its start is known only when it ended."""

    async def started(self, handle: JobHandle) -> None:
        await self._done[(handle.step, handle.attempt)].wait()


async def test_a_chains_child_is_prepared_before_its_parent_is_heard_to_run() -> None:
    g = graph(inst("a"), inst("b", "a"))
    ad, got = QuietStart(), []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, shell(ad, g).run("a", 1, False), got)
            await ad.wait_submitted("a")
            await anyio.wait_all_tasks_blocked()
            assert ["b"] == ad.prepared  # while "a" waits, or runs unheard of
            assert [] == got
            ad.finish("a")
    assert [JobStarted, JobExited] == [type(e) for e in got]


async def test_a_fan_out_of_four_is_prepared_but_not_one_of_five() -> None:
    four = [inst(f"c{i}", "a") for i in range(4)]
    five = [*four, inst("c4", "a")]
    assert ["c0", "c1", "c2", "c3"] == await prepared_while_running(graph(inst("a"), *four), "a")
    assert [] == await prepared_while_running(graph(inst("a"), *five), "a")


@pytest.mark.parametrize(
    ("child", "why"),
    [(inst("b", "a", when="a.completed"), "a condition decides whether it runs"),
     (inst("b", "a", "x"), "another parent holds it back too")],
)
async def test_a_child_with_when_or_another_parent_is_not_prepared(child: StepInstance,
                                                                   why: str) -> None:
    assert [] == await prepared_while_running(graph(inst("a"), inst("x"), child), "a"), why


async def test_adopted_waits_for_the_job_and_reports_its_exit() -> None:
    ad = RecordingAdapter()
    handle = JobHandle(step="a", attempt=2, job_id="77", backend="fake")
    ad.adopt(handle)
    jobs = shell(ad, graph(inst("a")))
    got: list[Event] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, jobs.adopted(handle), got)
            await anyio.wait_all_tasks_blocked()
            assert ({("a", 2): handle}, []) == (jobs.active_jobs(), got)
            ad.finish("a", 0, attempt=2)
    assert [JobExited.match(exit_code=0, outcome="COMPLETED", time=NOW)] == got
    assert ({}, []) == (jobs.active_jobs(), ad.submitted), "nothing is submitted again"
