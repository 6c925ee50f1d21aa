"""A study resumed from stored entries (``recover_records`` → ``StudyRuntime``): ended
parents are replayed, not re-run; adopted jobs and exits seen while away are applied; a
lost attempt is reported and run again; races are decided again in order of end."""

from __future__ import annotations

import anyio

from adapters.base import JobHandle, JobOutcome, JobResult
from engine.actors.study import StudyRuntime
from engine.machines.recovery import recover_records
from engine.messages import StepState, StudyState
from engine.spec.graph import StudyGraph
from engine.store import StepEntry
from engine.testing import FakeBus
from tests.actors.support import RecordingAdapter, changes, graph, inst, running



def entry(step: str, state: StepState, **fields: object) -> StepEntry:
    return StepEntry(study_id="sid", step=step, state=state.value,
                     **fields)  # type: ignore[arg-type]


def in_flight(step: str, attempt: int, state: StepState = StepState.RUNNING) -> StepEntry:
    """A step whose attempt was in flight when the engine stopped."""
    return entry(step, state, attempt=attempt, job_id="77", submit_time=5.0, start_time=5.0,
                 intent_attempt=attempt, intent_key=f"sid/{step}/{attempt}")


def resumed(g: StudyGraph, entries: dict[str, StepEntry],
            found: dict[str, JobHandle | JobResult | None],
            ad: RecordingAdapter) -> tuple[StudyRuntime, FakeBus]:
    bus = FakeBus()
    recovered = recover_records(g, entries, {}, found)
    return StudyRuntime(g, study_id="sid", bus=bus, adapter=ad, recovered=recovered), bus


async def test_a_child_of_a_finished_parent_starts_without_the_parent_running_again() -> None:
    ad = RecordingAdapter()
    rt, bus = resumed(graph(inst("a"), inst("b", "a")),
                      {"a": entry("a", StepState.FINISHED, attempt=1, exit_code=0, end_time=9.0,
                                  final=True)}, {}, ad)
    async with running(rt):
        await ad.wait_submitted("b")
        ad.finish("b")
    assert [("b", 1)] == ad.submitted
    assert [] == changes(bus, "a"), "the parent's end is replayed, not published again"
    assert (StudyState.FINISHED, {"FINISHED": 2}) == (rt.outcome, rt.counts)


async def test_an_adopted_jobs_exit_is_applied_to_its_step() -> None:
    ad = RecordingAdapter()
    handle = JobHandle(step="a", attempt=2, job_id="77", backend="fake")
    ad.adopt(handle)
    rt, bus = resumed(graph(inst("a"), inst("b", "a")), {"a": in_flight("a", 2)},
                      {"a": handle}, ad)
    async with running(rt):
        await anyio.wait_all_tasks_blocked()
        assert {("a", 2): handle} == rt.active_jobs()
        ad.finish("a", 0, attempt=2)
        await ad.wait_submitted("b")
        ad.finish("b")
    first = changes(bus, "a")[0]
    assert (StepState.FINISHED, StepState.RUNNING, 2, "77") == (first.state, first.previous, first.attempt,
                                                first.job_id)
    assert [("b", 1)] == ad.submitted, "the adopted job is not submitted again"
    assert StudyState.FINISHED == rt.outcome


async def test_an_exit_seen_while_the_engine_was_away_is_applied_without_a_new_attempt() -> None:
    ad = RecordingAdapter()
    rt, bus = resumed(graph(inst("a"), inst("b", "a")), {"a": in_flight("a", 1)},
                      {"a": JobResult(outcome=JobOutcome.FAILED, exit_code=3)}, ad)
    async with running(rt):
        pass
    assert [(StepState.FAILED, 3, "exit_code")] == [(m.state, m.exit_code, m.kind)
                                            for m in changes(bus, "a")]
    assert (StepState.FAILED, "dependency") == (rt.records["b"].state, changes(bus, "b")[-1].kind)
    assert ([], StudyState.FAILURE) == (ad.submitted, rt.outcome)


async def test_a_lost_attempt_is_published_failed_lost_then_runs_again_as_the_next() -> None:
    ad = RecordingAdapter()
    rt, bus = resumed(graph(inst("a")), {"a": in_flight("a", 1)}, {"a": None}, ad)
    async with running(rt):
        await ad.wait_submitted("a")
        ad.finish("a", 0, attempt=2)
    lost, *rest = changes(bus, "a")
    assert (StepState.FAILED, StepState.RUNNING, 1, "lost", True, False) == (
        lost.state, lost.previous, lost.attempt, lost.kind, lost.retryable, lost.final)
    assert [(StepState.WAITING, 1), (StepState.PENDING, 2), (StepState.RUNNING, 2), (StepState.FINISHED, 2)] == [
        (m.state, m.attempt) for m in rest]
    assert ["sid/a/2"] == [r.key for r in ad.requests]
    assert StudyState.FINISHED == rt.outcome


async def test_a_replayed_race_is_won_by_the_member_that_ended_first() -> None:
    """``solver_a`` comes first in the study but ``solver_b`` ended earlier: ``solver_b``
    wins again, and ``solver_c``, adopted still running, is cancelled as a lost race."""
    ad = RecordingAdapter()
    handle = JobHandle(step="solver_c", attempt=1, job_id="77", backend="fake")
    ad.adopt(handle)
    g = graph(*(inst(f"solver_{m}", step="solver", race="g") for m in "abc"))
    rt, bus = resumed(g, {
        "solver_a": entry("solver_a", StepState.FINISHED, attempt=1, end_time=20.0, final=True),
        "solver_b": entry("solver_b", StepState.FINISHED, attempt=1, end_time=10.0, final=True),
        "solver_c": in_flight("solver_c", 1),
    }, {"solver_c": handle}, ad)
    async with running(rt):
        pass
    assert {"g": "solver_b"} == rt.supervisor.races.winners
    assert ([], [("solver_c", 1)]) == (ad.submitted, ad.cancelled)
    end = changes(bus, "solver_c")[-1]
    assert (StepState.CANCELLED, True, "race lost to solver_b") == (end.state, end.lost_race, end.reason)
    assert StudyState.FINISHED == rt.outcome
