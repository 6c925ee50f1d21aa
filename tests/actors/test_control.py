"""Control requests: ``answer_control`` on a live runtime, ``answer_not_hosted`` for a
study the engine does not run, and ``serve_control`` answering over a real nats-server."""

from __future__ import annotations

import anyio
import pytest

from engine import subjects
from engine.actors.control import answer_control, answer_not_hosted
from engine.actors.study import StudyRuntime
from engine.bus import open_bus
from engine.messages import (
    CancelSteps,
    ControlReply,
    SetThrottle,
    StepState,
    StepStateChanged,
    StudyState,
    new_event_id,
)
from engine.testing import FakeBus
from tests.actors.support import GUARD, RecordingAdapter, graph, inst, running



def study(bus: object, ad: RecordingAdapter, **kw: object) -> StudyRuntime:
    """``a`` (root) → ``b``, and ``c`` (root), as study ``sid``."""
    g = graph(inst("a"), inst("b", "a"), inst("c"))
    return StudyRuntime(g, study_id="sid", bus=bus, adapter=ad, **kw)  # type: ignore[arg-type]


def said(reply: object) -> tuple[bool, str, int]:
    """A control reply as ``(ok, detail, matched)``."""
    assert isinstance(reply, ControlReply)
    return reply.ok, reply.detail, reply.matched


def cancel(glob: str = "", study_id: str = "sid") -> CancelSteps:
    return CancelSteps(event_id=new_event_id(), study_id=study_id, glob=glob)


async def test_cancelling_the_study_matches_every_step_and_cancels_them_all() -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = study(bus, ad)
    async with running(rt):
        await ad.wait_submitted("a")
        await ad.wait_submitted("c")
        reply = answer_control(rt, cancel())
        assert (True, "study cancelled", 3) == said(reply)
    assert StudyState.CANCELLED == rt.outcome
    assert {"a": StepState.CANCELLED, "b": StepState.CANCELLED, "c": StepState.CANCELLED} == {
        n: r.state for n, r in rt.records.items()}
    assert {("a", 1), ("c", 1)} == set(ad.cancelled)


async def test_cancelling_one_step_by_glob_leaves_the_others_running() -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = study(bus, ad)
    async with running(rt):
        await ad.wait_submitted("a")
        await ad.wait_submitted("c")
        reply = answer_control(rt, cancel("[ab]"))
        assert (True, "2 steps match '[ab]'", 2) == said(reply)
        await anyio.wait_all_tasks_blocked()
        assert [("a", 1)] == ad.cancelled
        ad.finish("c")
    assert {"a": StepState.CANCELLED, "b": StepState.CANCELLED, "c": StepState.FINISHED} == {
        n: r.state for n, r in rt.records.items()}


async def test_requests_that_change_nothing_are_refused_and_the_study_goes_on() -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = study(bus, ad, throttle=1)
    async with running(rt):
        await ad.wait_submitted("a")
        replies = [
            answer_control(rt, cancel("zz*")),
            answer_control(rt, SetThrottle(event_id="t", study_id="sid", limit=-1)),
            answer_control(rt, cancel(study_id="other")),
            answer_control(rt, SetThrottle(event_id="t", study_id="other", limit=2)),
        ]
        await anyio.wait_all_tasks_blocked()
        assert [] == ad.cancelled
        assert {"global": 1} == rt.supervisor.limits
        ad.finish("a")
        await ad.wait_submitted("c")
        ad.finish("c")
        await ad.wait_submitted("b")
        ad.finish("b")
    assert [
        (False, "no step matches 'zz*'", 0),
        (False, "throttle must be 0 (unlimited) or more, not -1", 0),
        (False, "unknown study other", 0),
        (False, "unknown study other", 0),
    ] == [said(r) for r in replies]
    assert StudyState.FINISHED == rt.outcome


async def test_a_throttle_change_is_applied_to_the_live_study() -> None:
    bus, ad = FakeBus(), RecordingAdapter()
    rt = study(bus, ad, throttle=1)
    async with running(rt):
        await ad.wait_submitted("a")
        await anyio.wait_all_tasks_blocked()
        assert [("a", 1)] == ad.submitted
        reply = answer_control(rt, SetThrottle(event_id="t", study_id="sid", limit=2))
        assert (True, "throttle global = 2", 0) == said(reply)
        await ad.wait_submitted("c")
        for name in "acb":
            await ad.wait_submitted(name)
            ad.finish(name)
    assert {"global": 2} == rt.supervisor.limits


@pytest.mark.parametrize(
    ("request_", "known", "expected"),
    [
        (CancelSteps(event_id="r", study_id="s1"), True,
         (True, "study s1 is not running: nothing to cancel", 0)),
        (SetThrottle(event_id="r", study_id="s1", limit=1), True,
         (False, "study s1 is not running", 0)),
        (CancelSteps(event_id="r", study_id="s1"), False,
         (False, "unknown study s1", 0)),
        (SetThrottle(event_id="r", study_id="s1", limit=1), False,
         (False, "unknown study s1", 0)),
    ],
)
def test_a_study_not_hosted_here_is_answered_by_whether_it_is_known(
        request_: CancelSteps | SetThrottle, known: bool, expected: tuple[bool, str, int]) -> None:
    assert expected == said(answer_not_hosted(request_, known=known))


async def test_serve_control_answers_a_cancel_request_over_nats(nats_server: str) -> None:
    ad = RecordingAdapter()
    async with open_bus(nats_server) as bus, bus.subscribe(
            subjects.step_event("sid", "b", StepState.CANCELLED)) as b_cancelled:
        rt = study(bus, ad)
        async with running(rt):
            await ad.wait_submitted("a")
            reply = await bus.request(
                subjects.control("sid", "cancel"),
                CancelSteps(event_id=new_event_id(), study_id="sid", glob="b",
                            reason="not needed"),
                timeout=GUARD)
            assert (True, "1 steps match 'b'", 1) == said(reply)
            await ad.wait_submitted("c")
            ad.finish("a")
            ad.finish("c")
        with anyio.fail_after(GUARD):
            event = await anext(aiter(b_cancelled))
    assert isinstance(event, StepStateChanged)
    assert ("sid", "b", StepState.INITIALIZED, "not needed", True) == (
        event.study_id, event.step, event.previous, event.reason, event.final)
    assert StudyState.CANCELLED == rt.outcome
    assert {"a": StepState.FINISHED, "b": StepState.CANCELLED, "c": StepState.FINISHED} == {
        n: r.state for n, r in rt.records.items()}
    assert [("a", 1), ("c", 1)] == sorted(ad.submitted), "b never ran"
