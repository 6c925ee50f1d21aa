"""The pure supervisor machine: FIFO throttle, live throttle changes, study completion."""

from __future__ import annotations

import pytest

from engine.errors import InvalidTransition
from engine.machines.supervisor import SupervisorState, decide, study_outcome
from engine.messages import (
    GrantSlot,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    StepEnded,
    StepState,
    StudyCancelRequested,
    StudyFinished,
    StudyState,
    ThrottleChanged,
)

NOW = 0.0


def run(st: SupervisorState, *events):  # type: ignore[no-untyped-def]
    cmds = []
    for ev in events:
        st, out = decide(st, ev, now=NOW)
        cmds.extend(out)
        assert st.running >= 0
        assert len(set(st.queue)) == len(st.queue)
    return st, cmds


def test_throttle_grants_up_to_the_limit_then_queues_in_request_order() -> None:
    st, cmds = run(SupervisorState(total=4, limit=2), *(SlotRequested(step=s) for s in "abcd"))
    assert [GrantSlot(step="a"), GrantSlot(step="b")] == cmds
    assert ("c", "d") == st.queue
    st, cmds = run(st, SlotReleased(step="a"))
    assert [GrantSlot(step="c")] == cmds
    assert (2, ("d",)) == (st.running, st.queue)


def test_zero_limit_means_unlimited() -> None:
    _, cmds = run(SupervisorState(total=100, limit=0), *(SlotRequested(step=str(i)) for i in range(100)))
    assert 100 == len(cmds)


def test_raising_the_throttle_while_running_grants_queued_steps_at_once() -> None:
    st, _ = run(SupervisorState(total=3, limit=1), *(SlotRequested(step=s) for s in "abc"))
    st, cmds = run(st, ThrottleChanged(limit=3))
    assert [GrantSlot(step="b"), GrantSlot(step="c")] == cmds
    assert 3 == st.running


def test_lowering_the_throttle_takes_effect_as_slots_are_released() -> None:
    st, _ = run(SupervisorState(total=4, limit=3), *(SlotRequested(step=s) for s in "abcd"))
    st, cmds = run(st, ThrottleChanged(limit=1), SlotReleased(step="a"), SlotReleased(step="b"))
    assert [] == cmds
    st, cmds = run(st, SlotReleased(step="c"))
    assert [GrantSlot(step="d")] == cmds


def test_withdrawn_request_leaves_the_queue() -> None:
    st, _ = run(SupervisorState(total=3, limit=1), *(SlotRequested(step=s) for s in "abc"))
    st, cmds = run(st, SlotWithdrawn(step="b"), SlotReleased(step="a"))
    assert [GrantSlot(step="c")] == cmds


def test_release_without_a_held_slot_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        decide(SupervisorState(total=1), SlotReleased(step="a"), now=NOW)


def test_negative_throttle_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        decide(SupervisorState(total=1), ThrottleChanged(limit=-1), now=NOW)


def test_study_finishes_when_every_step_is_terminal() -> None:
    st, cmds = run(SupervisorState(total=2), StepEnded(step="a", state=StepState.FINISHED))
    assert [] == cmds
    st, cmds = run(st, StepEnded(step="b", state=StepState.FINISHED))
    assert [StudyFinished(state=StudyState.FINISHED, counts={"FINISHED": 2})] == cmds
    with pytest.raises(InvalidTransition):
        decide(st, StepEnded(step="c", state=StepState.FINISHED), now=NOW)


@pytest.mark.parametrize(
    ("states", "cancelled", "expected"),
    [
        ([StepState.FINISHED, StepState.FAILED], False, StudyState.FAILURE),
        ([StepState.FINISHED, StepState.CANCELLED], False, StudyState.CANCELLED),
        ([StepState.FAILED, StepState.CANCELLED], True, StudyState.FAILURE),
        ([StepState.FINISHED, StepState.FINISHED], True, StudyState.CANCELLED),
        ([StepState.DRYRUN, StepState.DRYRUN], False, StudyState.FINISHED),
        ([StepState.TIMEDOUT], False, StudyState.FAILURE),
    ],
)
def test_study_outcome_follows_maestro(states, cancelled, expected) -> None:  # type: ignore[no-untyped-def]
    st = SupervisorState(total=len(states))
    if cancelled:
        st, _ = run(st, StudyCancelRequested())
    _, cmds = run(st, *(StepEnded(step=str(i), state=s) for i, s in enumerate(states)))
    assert expected == cmds[-1].state
    assert expected == study_outcome(cmds[-1].counts, cancelled=cancelled)
