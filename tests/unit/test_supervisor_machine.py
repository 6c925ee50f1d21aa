"""The pure supervisor machine: FIFO throttles per scope, live throttle changes, study
completion, cancel and stop of the study, and race groups."""

from __future__ import annotations

import pytest

from engine.errors import InvalidTransition
from engine.machines.race import new_race_book
from engine.machines.supervisor import SupervisorState, decide, new_supervisor, study_outcome
from engine.messages import (
    CancelStep,
    CheckRace,
    EndStudy,
    GrantSlot,
    KillAllJobs,
    RaceChecked,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    StepEnded,
    StepState,
    StopRequested,
    StudyCancelRequested,
    StudyState,
    ThrottleChanged,
)
from engine.spec.graph import StepInstance, StudyGraph

NOW = 0.0
G = ("global",)


def state(total: int, **limits: int) -> SupervisorState:
    return SupervisorState(total=total, limits={k.rstrip("_").replace("_", ":", 1): v for k, v in limits.items()})


def run(st: SupervisorState, *events):  # type: ignore[no-untyped-def]
    cmds = []
    for ev in events:
        st, out = decide(st, ev, now=NOW)
        cmds.extend(out)
        assert all(v >= 0 for v in st.running.values())
        names = [n for q in st.queues.values() for _, n in q]
        assert len(set(names)) == len(names)
    return st, cmds


def req(step: str, *scopes: str) -> SlotRequested:
    return SlotRequested(step=step, scopes=scopes or G)


def rel(step: str, *scopes: str) -> SlotReleased:
    return SlotReleased(step=step, scopes=scopes or G)


def test_throttle_grants_up_to_the_limit_then_queues_in_request_order() -> None:
    st, cmds = run(state(4, global_=2), *(req(s) for s in "abcd"))
    assert [GrantSlot(step="a"), GrantSlot(step="b")] == cmds
    assert ["c", "d"] == [name for _, name in st.queues[G]]
    st, cmds = run(st, rel("a"))
    assert [GrantSlot(step="c")] == cmds
    assert 2 == st.running["global"]


def test_a_next_attempt_goes_before_the_first_attempts_and_after_earlier_next_ones() -> None:
    st, _ = run(state(6, global_=1), req("a"), req("b"), req("c"))
    st, _ = run(st, SlotRequested(step="x", scopes=G, again=True),
                SlotRequested(step="y", scopes=G, again=True), req("d"))
    assert ["x", "y", "b", "c", "d"] == [name for _, name in st.queues[G]]
    granted = []
    for step in "axybc":
        st, cmds = run(st, rel(step))
        granted += [c.step for c in cmds]
    assert ["x", "y", "b", "c", "d"] == granted


def test_zero_limit_means_unlimited() -> None:
    _, cmds = run(state(100, global_=0), *(req(str(i)) for i in range(100)))
    assert 100 == len(cmds)


def test_group_throttle_holds_back_its_members_but_not_the_others() -> None:
    st, cmds = run(state(4, group_sims=1),
                   req("s1", "global", "group:sims"), req("s2", "global", "group:sims"),
                   req("x", "global"))
    assert [GrantSlot(step="s1"), GrantSlot(step="x")] == cmds
    st, cmds = run(st, rel("s1", "global", "group:sims"))
    assert [GrantSlot(step="s2")] == cmds


def test_adapter_throttles_are_independent_local_steps_use_no_slurm_slots() -> None:
    st, cmds = run(state(4, adapter_slurm=1, adapter_local=1),
                   req("l1", "global", "adapter:local"), req("s1", "global", "adapter:slurm"),
                   req("l2", "global", "adapter:local"), req("s2", "global", "adapter:slurm"))
    assert [GrantSlot(step="l1"), GrantSlot(step="s1")] == cmds
    assert 1 == st.running["adapter:slurm"]


def test_raising_the_throttle_while_running_grants_queued_steps_at_once() -> None:
    st, _ = run(state(3, global_=1), *(req(s) for s in "abc"))
    st, cmds = run(st, ThrottleChanged(scope="global", limit=3))
    assert [GrantSlot(step="b"), GrantSlot(step="c")] == cmds
    assert 3 == st.running["global"]


def test_lowering_the_throttle_takes_effect_as_slots_are_released() -> None:
    st, _ = run(state(4, global_=3), *(req(s) for s in "abcd"))
    st, cmds = run(st, ThrottleChanged(scope="global", limit=1), rel("a"), rel("b"))
    assert [] == cmds
    st, cmds = run(st, rel("c"))
    assert [GrantSlot(step="d")] == cmds


def test_withdrawn_request_leaves_the_queue() -> None:
    st, _ = run(state(3, global_=1), *(req(s) for s in "abc"))
    st, cmds = run(st, SlotWithdrawn(step="b"), rel("a"))
    assert [GrantSlot(step="c")] == cmds


def test_release_without_a_held_slot_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        decide(state(1), rel("a"), now=NOW)


def test_negative_throttle_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        decide(state(1), ThrottleChanged(limit=-1), now=NOW)


def test_study_finishes_when_every_step_is_terminal() -> None:
    st, cmds = run(state(2), StepEnded(step="a", state=StepState.FINISHED))
    assert [] == cmds
    st, cmds = run(st, StepEnded(step="b", state=StepState.FINISHED))
    assert [EndStudy(state=StudyState.FINISHED, counts={"FINISHED": 2})] == cmds
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
    st = state(len(states))
    if cancelled:
        st, _ = run(st, StudyCancelRequested())
    _, cmds = run(st, *(StepEnded(step=str(i), state=s) for i, s in enumerate(states)))
    assert EndStudy.match(state=expected) == cmds[-1]
    assert expected == study_outcome(cmds[-1].counts, cancelled=cancelled)


# ------------------------------------------------------------------ cancel and stop

STEPS = ("c", "a", "b")  # status order, deliberately not alphabetical


def test_the_first_cancel_of_the_study_cancels_every_step_in_status_order() -> None:
    st, cmds = run(new_supervisor(STEPS, limits={}), StudyCancelRequested(reason="user"))
    assert [CancelStep(step=s, reason="user", lost_race=False) for s in STEPS] == cmds
    assert (True, 1) == (st.cancelled, st.cancels)


def test_a_second_cancel_kills_every_job_instead_of_cancelling_again() -> None:
    st, _ = run(new_supervisor(STEPS, limits={}), StudyCancelRequested())
    st, cmds = run(st, StudyCancelRequested())
    assert [KillAllJobs()] == cmds
    _, cmds = run(st, StudyCancelRequested())
    assert [KillAllJobs()] == cmds, "and every later one"


def test_a_stop_asked_by_a_step_cancels_every_step_once() -> None:
    st, cmds = run(new_supervisor(STEPS, limits={}),
                   StopRequested(step="a", reason="a: hard fail"))
    assert [CancelStep.match(step=s, reason="a: hard fail") for s in STEPS] == cmds
    st2, cmds = run(st, StopRequested(step="b", reason="b: hard fail"))
    assert (st, []) == (st2, cmds)


def test_a_stop_after_a_cancel_changes_nothing() -> None:
    st, _ = run(new_supervisor(STEPS, limits={}), StudyCancelRequested())
    st2, cmds = run(st, StopRequested(step="a", reason="a: hard fail"))
    assert (st, []) == (st2, cmds)


# ------------------------------------------------------------------ races

def race_supervisor(check: str = "") -> SupervisorState:
    """Members a, b, c of race ``g`` (with ``check``), a step x outside it, and a step u
    whose command uses the winner's workspace."""
    steps = tuple(StepInstance(name=n, step=n, description="", workspace=f"/s/{n}",
                               cmd="cat $(race.g)/out" if n == "u" else "true",
                               race="g" if n in "abc" else "") for n in "abcxu")
    troupe = {"races": {"g": {"check": check}}} if check else {}
    g = StudyGraph(name="t", description="t", spec_path="/t.yaml", study_dir="/s",
                   steps=steps, troupe=troupe)
    return new_supervisor(tuple(g.bfs_order()), limits={}, races=new_race_book(g))


def finished(step: str) -> StepEnded:
    return StepEnded(step=step, state=StepState.FINISHED)


def test_without_a_check_the_first_member_to_finish_wins_and_the_rivals_lose() -> None:
    st, cmds = run(race_supervisor(), finished("b"))
    assert [CancelStep.match(step="a", lost_race=True, reason="race lost to b"),
            CancelStep.match(step="c", lost_race=True, reason="race lost to b")] == cmds
    assert {"g": "b"} == st.races.winners
    _, cmds = run(st, finished("a"))
    assert [] == cmds, "the race is decided"


def test_a_step_outside_the_race_finishing_decides_nothing() -> None:
    st, cmds = run(race_supervisor(), finished("x"))
    assert ([], {}) == (cmds, st.races.winners)


def test_a_member_that_ends_failed_is_no_candidate() -> None:
    st, cmds = run(race_supervisor(), StepEnded(step="a", state=StepState.FAILED), finished("c"))
    assert [CancelStep.match(step="a", lost_race=True), CancelStep.match(step="b", lost_race=True)
            ] == cmds
    assert {"g": "c"} == st.races.winners


def test_with_a_check_candidates_are_checked_one_at_a_time_in_order_of_end() -> None:
    st, cmds = run(race_supervisor("test -f ok"), finished("b"))
    assert [CheckRace(group="g", step="b", check="test -f ok")] == cmds
    st, cmds = run(st, finished("a"))
    assert [] == cmds, "a waits until b's check is done"
    st, cmds = run(st, RaceChecked(group="g", step="b", passed=False))
    assert [CheckRace(group="g", step="a", check="test -f ok")] == cmds
    assert {} == st.races.winners
    st, cmds = run(st, RaceChecked(group="g", step="a", passed=True))
    assert [CancelStep.match(step="b", lost_race=True, reason="race lost to a"),
            CancelStep.match(step="c", lost_race=True, reason="race lost to a")] == cmds
    assert {"g": "a"} == st.races.winners


def test_a_check_result_after_the_race_is_decided_changes_nothing() -> None:
    st, _ = run(race_supervisor("test -f ok"), finished("b"),
                RaceChecked(group="g", step="b", passed=True))
    st2, cmds = run(st, RaceChecked(group="g", step="b", passed=True))
    assert ([], {"g": "b"}) == (cmds, st2.races.winners)
    st2, cmds = run(st, finished("c"), RaceChecked(group="g", step="c", passed=True))
    assert ([], {"g": "b"}) == (cmds, st2.races.winners)


def test_lost_races_do_not_make_the_study_cancelled() -> None:
    st, cmds = run(race_supervisor(), finished("b"), finished("x"), finished("u"),
                   StepEnded(step="a", state=StepState.CANCELLED, benign=True),
                   StepEnded(step="c", state=StepState.CANCELLED, benign=True))
    assert EndStudy(state=StudyState.FINISHED, counts={"FINISHED": 3, "CANCELLED": 2}) == cmds[-1]


def test_a_step_naming_an_open_race_gets_its_slot_once_the_check_decides_it() -> None:
    st, cmds = run(race_supervisor("test -f ok"), finished("a"),
                   SlotRequested(step="u", scopes=("global",)))
    assert [CheckRace.match(step="a")] == cmds, "u waits: the race is open"
    assert {"u": ("global",)} == st.parked
    st, cmds = run(st, RaceChecked(group="g", step="a", passed=True))
    assert [CancelStep.match(step="b"), CancelStep.match(step="c"), GrantSlot(step="u")] == cmds
    assert {} == st.parked


def test_a_step_naming_a_race_nobody_won_runs_once_every_member_ended() -> None:
    st, cmds = run(race_supervisor(), SlotRequested(step="u", scopes=("global",)),
                   StepEnded(step="a", state=StepState.FAILED),
                   StepEnded(step="b", state=StepState.FAILED))
    assert [] == cmds
    st, cmds = run(st, StepEnded(step="c", state=StepState.CANCELLED))
    assert [GrantSlot(step="u")] == cmds


def test_a_parked_step_that_is_cancelled_leaves_the_park() -> None:
    st, _ = run(race_supervisor(), SlotRequested(step="u", scopes=("global",)),
                SlotWithdrawn(step="u"))
    st, cmds = run(st, finished("a"))
    assert GrantSlot(step="u") not in cmds and {} == st.parked


def test_a_step_outside_any_race_is_never_parked() -> None:
    st, cmds = run(race_supervisor(), SlotRequested(step="x", scopes=("global",)))
    assert ([GrantSlot(step="x")], {}) == (cmds, st.parked)
