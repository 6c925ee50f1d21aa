"""The pure step machine: every (state, event) pair, and the commands of the main paths."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.machines.step import StepRecord, decide, new_record
from engine.messages import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    CancelJob,
    CancelRequested,
    DependencyEnded,
    JobExited,
    JobStarted,
    PublishState,
    ReleaseSlot,
    RequestSlot,
    SlotGranted,
    StepState,
    StudyOpened,
    SubmitFailed,
    SubmitJob,
    TimerFired,
    WithdrawSlotRequest,
    WriteScript,
)

S = StepState
NOW = 1_700_000_000.0
INVALID = "invalid"

EVENTS = {
    "opened": StudyOpened(),
    "dep_finished": DependencyEnded(dependency="a", state=S.FINISHED),
    "dep_failed": DependencyEnded(dependency="a", state=S.FAILED),
    "dep_cancelled": DependencyEnded(dependency="a", state=S.CANCELLED),
    "granted": SlotGranted(),
    "started": JobStarted(job_id="42", time=NOW),
    "exit0": JobExited(exit_code=0, time=NOW),
    "exit1": JobExited(exit_code=1, time=NOW),
    "submit_failed": SubmitFailed(detail="no shell"),
    "cancel": CancelRequested(),
    "timer": TimerFired(name="walltime", attempt=1),
}

_NON_TERMINAL = {
    S.INITIALIZED: {
        "opened": S.INITIALIZED, "dep_finished": S.WAITING, "dep_failed": S.FAILED,
        "dep_cancelled": S.CANCELLED, "granted": INVALID, "started": INVALID,
        "exit0": INVALID, "exit1": INVALID, "submit_failed": INVALID, "cancel": S.CANCELLED,
        "timer": S.INITIALIZED,
    },
    S.WAITING: {
        "opened": INVALID, "dep_finished": INVALID, "dep_failed": INVALID,
        "dep_cancelled": INVALID, "granted": S.PENDING, "started": INVALID, "exit0": INVALID,
        "exit1": INVALID, "submit_failed": INVALID, "cancel": S.CANCELLED, "timer": S.WAITING,
    },
    S.PENDING: {
        "opened": INVALID, "dep_finished": INVALID, "dep_failed": INVALID,
        "dep_cancelled": INVALID, "granted": INVALID, "started": S.RUNNING,
        "exit0": S.FINISHED, "exit1": S.FAILED, "submit_failed": S.FAILED, "cancel": S.PENDING,
        "timer": S.PENDING,
    },
    S.RUNNING: {
        "opened": INVALID, "dep_finished": INVALID, "dep_failed": INVALID,
        "dep_cancelled": INVALID, "granted": INVALID, "started": INVALID,
        "exit0": S.FINISHED, "exit1": S.FAILED, "submit_failed": INVALID, "cancel": S.RUNNING,
        "timer": S.RUNNING,
    },
}
_TERMINAL_ROW = {
    "opened": "same", "dep_finished": "same", "dep_failed": "same", "dep_cancelled": "same",
    "granted": "same", "started": INVALID, "exit0": INVALID, "exit1": INVALID,
    "submit_failed": INVALID, "cancel": "same", "timer": "same",
}
EXPECTED = {**_NON_TERMINAL, **{s: _TERMINAL_ROW for s in TERMINAL_STATES}}


def record_in(state: StepState) -> StepRecord:
    """A record as it would be in ``state`` (one parent outstanding while INITIALIZED)."""
    rec = new_record("b", 1)
    if state == S.INITIALIZED:
        return rec
    attempt = 1 if state not in (S.WAITING,) else 0
    return replace(rec, state=state, remaining=0, attempt=attempt, queued=state == S.WAITING)


def check_invariants(rec: StepRecord) -> None:
    assert rec.remaining >= 0
    if rec.state in ACTIVE_STATES:
        assert rec.attempt > 0
    if rec.state == S.RUNNING:
        assert rec.job_id


def test_every_state_event_pair_is_covered_by_the_table() -> None:
    assert set(EXPECTED) == set(StepState)
    for row in EXPECTED.values():
        assert set(row) == set(EVENTS)


@pytest.mark.parametrize("state", list(StepState))
@pytest.mark.parametrize("event_name", list(EVENTS))
def test_each_state_event_pair_transitions_or_raises_invalid_transition(
    state: StepState, event_name: str
) -> None:
    rec = record_in(state)
    if state == S.RUNNING:
        rec = replace(rec, job_id="42")
    expected = EXPECTED[state][event_name]
    event = EVENTS[event_name]
    if expected == INVALID:
        with pytest.raises(InvalidTransition) as info:
            decide(rec, event, now=NOW)
        assert (info.value.step, info.value.state, info.value.event) == ("b", state, event)
        return
    new, _ = decide(rec, event, now=NOW)
    assert (state if expected == "same" else expected) == new.state
    check_invariants(new)


def test_root_step_asks_for_a_slot_when_the_study_opens() -> None:
    rec, cmds = decide(new_record("a", 0), StudyOpened(), now=NOW)
    assert S.WAITING == rec.state
    assert [PublishState, RequestSlot] == [type(c) for c in cmds]
    assert cmds[0].previous == S.INITIALIZED and cmds[0].state == S.WAITING


def test_step_waits_for_every_parent_before_asking_for_a_slot() -> None:
    rec = new_record("c", 2)
    rec, cmds = decide(rec, DependencyEnded(dependency="a", state=S.FINISHED), now=NOW)
    assert (S.INITIALIZED, 1, []) == (rec.state, rec.remaining, cmds)
    rec, cmds = decide(rec, DependencyEnded(dependency="b", state=S.FINISHED), now=NOW)
    assert S.WAITING == rec.state
    assert RequestSlot(step="c", scopes=("global",)) == cmds[-1]


def test_granted_step_is_submitted_as_attempt_one() -> None:
    rec = record_in(S.WAITING)
    rec, cmds = decide(rec, SlotGranted(), now=NOW)
    assert (S.PENDING, 1, NOW) == (rec.state, rec.attempt, rec.submit_time)
    assert SubmitJob(step="b", attempt=1, restart=False) == cmds[-1]


def test_nonzero_exit_fails_the_step_and_releases_its_slot() -> None:
    rec = replace(record_in(S.RUNNING), job_id="42")
    rec, cmds = decide(rec, JobExited(exit_code=3, time=NOW + 1), now=NOW + 1)
    assert (S.FAILED, 3, NOW + 1) == (rec.state, rec.exit_code, rec.end_time)
    pub = cmds[0]
    assert isinstance(pub, PublishState)
    assert ("exit_code", 3, "42", True) == (pub.kind, pub.exit_code, pub.job_id, pub.final)
    assert ReleaseSlot(step="b", scopes=("global",)) == cmds[1]


def test_failed_parent_fails_the_child_with_kind_dependency() -> None:
    rec, cmds = decide(new_record("b", 2), EVENTS["dep_failed"], now=NOW)
    assert S.FAILED == rec.state
    assert "dependency" == cmds[0].kind
    assert "a" in rec.reason


def test_cancelled_parent_cancels_the_child() -> None:
    rec, _ = decide(new_record("b", 1), EVENTS["dep_cancelled"], now=NOW)
    assert S.CANCELLED == rec.state


def test_cancelling_a_waiting_step_withdraws_its_slot_request() -> None:
    rec, cmds = decide(record_in(S.WAITING), CancelRequested(), now=NOW)
    assert S.CANCELLED == rec.state
    assert WithdrawSlotRequest(step="b") == cmds[-1]


def test_cancelling_a_running_step_stops_its_job_then_records_cancelled_on_exit() -> None:
    rec = replace(record_in(S.RUNNING), job_id="42")
    rec, cmds = decide(rec, CancelRequested(), now=NOW)
    assert [CancelJob(step="b", attempt=1)] == cmds
    rec2, cmds2 = decide(rec, CancelRequested(), now=NOW)
    assert (rec, []) == (rec2, cmds2), "cancelling twice changes nothing"
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=NOW), now=NOW)
    assert S.CANCELLED == rec.state
    assert ReleaseSlot(step="b", scopes=("global",)) in cmds


def test_cancelling_a_finished_step_changes_nothing() -> None:
    rec = replace(record_in(S.FINISHED), end_time=NOW)
    assert (rec, []) == decide(rec, CancelRequested(), now=NOW)


def test_grant_arriving_after_cancellation_gives_the_slot_back() -> None:
    rec = replace(record_in(S.CANCELLED), end_time=NOW)
    assert (rec, [ReleaseSlot(step="b", scopes=("global",))]) == decide(rec, SlotGranted(), now=NOW)


def test_dry_run_step_becomes_dryrun_and_writes_its_script() -> None:
    rec, cmds = decide(new_record("a", 0, dry_run=True), StudyOpened(), now=NOW)
    assert S.DRYRUN == rec.state
    assert WriteScript(step="a") == cmds[0]
    assert not any(isinstance(c, RequestSlot) for c in cmds)


def test_submit_failure_is_data_with_kind_submit_rejected() -> None:
    rec = record_in(S.PENDING)
    rec, cmds = decide(rec, SubmitFailed(detail="exec format error"), now=NOW)
    assert S.FAILED == rec.state
    assert ("submit_rejected", "exec format error") == (cmds[0].kind, cmds[0].reason)
