"""The study runtime's shell with a fake bus and a fake adapter: routing, throttling,
cancellation and shutdown, without NATS or processes."""

from __future__ import annotations

import anyio
import pytest

from adapters.fake import FakeAdapter
from engine.actors.study import StudyRuntime
from engine.messages import StepState, StepStateChanged, StudyEnded, StudyState
from engine.spec.graph import StepInstance, StudyGraph
from engine.testing import FakeBus, subject_matches
from tests.actors.support import GUARD, RecordingAdapter


def graph(*edges: tuple[str, tuple[str, ...]]) -> StudyGraph:
    steps = tuple(
        StepInstance(name=n, step=n, description="", workspace=f"/study/{n}", cmd="true",
                     parents=parents)
        for n, parents in edges
    )
    return StudyGraph(name="t", description="t", spec_path="/t.yaml", study_dir="/study",
                      steps=steps)


def runtime(g: StudyGraph, adapter: FakeAdapter, bus: FakeBus, **kw) -> StudyRuntime:  # type: ignore[no-untyped-def]
    return StudyRuntime(g, study_id="sid", bus=bus, adapter=adapter, **kw)


def transitions(bus: FakeBus, step: str) -> list[StepState]:
    return [m.state for _, m in bus.published if isinstance(m, StepStateChanged) and m.step == step]


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [("a.*.c", "a.b.c", True), ("a.>", "a.b.c", True), ("a.>", "a", False),
     ("a.*", "a.b.c", False), ("a.b", "a.b", True)],
)
def test_fake_bus_matches_subjects_like_nats(pattern: str, subject: str, expected: bool) -> None:
    assert expected == subject_matches(pattern, subject)


async def test_child_runs_only_after_its_parent_finished() -> None:
    bus, ad = FakeBus(), FakeAdapter()
    rt = runtime(graph(("a", ()), ("b", ("a",))), ad, bus)
    async with anyio.create_task_group() as tg:
        result: list[StudyState] = []

        async def go() -> None:
            result.append(await rt.run())

        tg.start_soon(go)
        await ad.wait_submitted("a")
        await anyio.wait_all_tasks_blocked()
        assert [("a", 1)] == ad.submitted
        ad.finish("a")
        await ad.wait_submitted("b")
        ad.finish("b")
    assert [StudyState.FINISHED] == result
    assert [StepState.WAITING, StepState.PENDING, StepState.RUNNING, StepState.FINISHED] == transitions(bus, "b")
    assert isinstance(bus.published[-1][1], StudyEnded)


async def test_throttle_one_runs_steps_one_at_a_time_and_can_be_raised_live() -> None:
    bus, ad = FakeBus(), FakeAdapter()
    rt = runtime(graph(("a", ()), ("b", ()), ("c", ())), ad, bus, throttle=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.run)
        await ad.wait_submitted("a")
        await anyio.wait_all_tasks_blocked()
        assert [("a", 1)] == ad.submitted
        rt.set_throttle(3)
        await ad.wait_submitted("c")
        assert {("a", 1), ("b", 1), ("c", 1)} == set(ad.submitted)
        for s in "abc":
            ad.finish(s)
    assert StudyState.FINISHED == rt.outcome


async def test_submit_error_fails_the_step_and_its_descendants() -> None:
    bus, ad = FakeBus(), FakeAdapter(submit_errors={"a": "exec format error"})
    rt = runtime(graph(("a", ()), ("b", ("a",)), ("c", ())), ad, bus)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.run)
        await ad.wait_submitted("c")
        ad.finish("c")
    assert StudyState.FAILURE == rt.outcome
    assert StepState.FAILED == rt.records["a"].state
    assert StepState.FAILED == rt.records["b"].state
    failed = [m for _, m in bus.published if isinstance(m, StepStateChanged) and m.step == "a"][-1]
    assert ("submit_rejected", "exec format error") == (failed.kind, failed.reason)


async def test_cancel_stops_running_jobs_and_cancels_waiting_steps() -> None:
    bus, ad = FakeBus(), FakeAdapter()
    rt = runtime(graph(("a", ()), ("b", ("a",)), ("c", ())), ad, bus, throttle=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.run)
        await ad.wait_submitted("a")
        await anyio.wait_all_tasks_blocked()
        rt.cancel()
    assert StudyState.CANCELLED == rt.outcome
    assert [("a", 1)] == ad.cancelled
    assert {"a": StepState.CANCELLED, "b": StepState.CANCELLED, "c": StepState.CANCELLED} == {
        n: r.state for n, r in rt.records.items()
    }
    assert [] == [s for s, _ in ad.submitted if s != "a"], "nothing new starts after a cancel"


async def test_a_second_cancel_kills_every_job_at_once() -> None:
    """Jobs that ignore the first cancel (SIGTERM) are killed by the second."""
    bus, ad = FakeBus(), RecordingAdapter(stubborn=True)
    rt = runtime(graph(("a", ()), ("b", ())), ad, bus)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.run)
            await ad.wait_submitted("a")
            await ad.wait_submitted("b")
            rt.cancel()
            await anyio.wait_all_tasks_blocked()
            assert (0, {("a", 1), ("b", 1)}) == (ad.kills, set(ad.cancelled))
            assert {"a": True, "b": True} == {n: r.cancelling for n, r in rt.records.items()}
            rt.cancel()
    assert 1 == ad.kills
    assert StudyState.CANCELLED == rt.outcome
    assert {StepState.CANCELLED} == {r.state for r in rt.records.values()}


async def test_dry_run_writes_scripts_in_dependency_order_and_submits_nothing() -> None:
    bus, ad = FakeBus(), FakeAdapter()
    rt = runtime(graph(("a", ()), ("b", ("a",))), ad, bus, dry_run=True)
    assert StudyState.FINISHED == await rt.run()
    assert (["a", "b"], []) == (ad.scripts, ad.submitted)
    assert {StepState.DRYRUN} == {r.state for r in rt.records.values()}


async def test_runtime_shuts_down_when_its_caller_is_cancelled() -> None:
    bus, ad = FakeBus(), FakeAdapter()
    rt = runtime(graph(("a", ())), ad, bus)
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.run)
            await ad.wait_submitted("a")
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught, "cancellation did not hang"
    assert rt.outcome is None


async def test_state_counts_follow_every_transition_without_a_recount() -> None:
    """The counts a status request reads are kept as the machines move the steps: at
    every moment they equal a recount of the records."""
    from engine.status import state_counts

    bus, ad = FakeBus(), FakeAdapter(submit_errors={"c": "exec format error"})
    rt = runtime(graph(("a", ()), ("b", ("a",)), ("c", ()), ("d", ("c",))), ad, bus,
                 throttle=1)

    def recount() -> dict[str, int]:
        return state_counts(r.state for r in rt.records.values())

    assert {"INITIALIZED": 4} == rt.state_counts() == recount()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.run)
        await ad.wait_submitted("a")
        await anyio.wait_all_tasks_blocked()
        assert recount() == rt.state_counts()
        assert 1 == rt.state_counts().get("RUNNING")
        ad.finish("a")
        await ad.wait_submitted("b")
        await anyio.wait_all_tasks_blocked()
        assert recount() == rt.state_counts()
        ad.finish("b")
    assert {"FINISHED": 2, "FAILED": 2} == rt.state_counts() == recount()
