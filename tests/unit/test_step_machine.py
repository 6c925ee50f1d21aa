"""The pure step machine: every (state, sub-state, event) triple, and the commands of the
main paths."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.machines.step import StepRecord, decide, invariant_violations, new_record
from engine.messages import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AttemptLost,
    CacheHit,
    CancelJob,
    CancelRequested,
    DependencyEnded,
    Event,
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

NOW = 1_700_000_000.0
INVALID = "invalid"  # decide raises InvalidTransition
SAME = "same"  # decide returns the record unchanged

EVENTS: dict[str, Event] = {
    "opened": StudyOpened(),
    "dep_finished": DependencyEnded(dependency="a", state=StepState.FINISHED),
    "dep_failed": DependencyEnded(dependency="a", state=StepState.FAILED),
    "dep_cancelled": DependencyEnded(dependency="a", state=StepState.CANCELLED),
    "granted": SlotGranted(),
    "started": JobStarted(job_id="42", time=NOW),
    "exit0": JobExited(exit_code=0, time=NOW),
    "exit1": JobExited(exit_code=1, time=NOW),
    "submit_failed": SubmitFailed(detail="no shell"),
    "cancel": CancelRequested(),
    "cancel_lost_race": CancelRequested(lost_race=True),
    "walltime": TimerFired(name="walltime", attempt=1),
    "retry_timer": TimerFired(name="retry", attempt=1),
    "cache_hit": CacheHit(),
    "attempt_lost": AttemptLost(attempt=1),
}

_BASE = new_record("b", 1)
_ACTIVE = replace(_BASE, remaining=0, attempt=1, submit_time=NOW)
ROWS: dict[str, StepRecord] = {
    # One parent outstanding.
    "INITIALIZED": _BASE,
    # Attempt 1 ended: queued for attempt 2, or waiting for the retry's backoff timer.
    "WAITING/queued": replace(_BASE, state=StepState.WAITING, remaining=0, attempt=1, queued=True),
    "WAITING/backoff": replace(_BASE, state=StepState.WAITING, remaining=0, attempt=1),
    "PENDING": replace(_ACTIVE, state=StepState.PENDING),
    "PENDING/cancelling": replace(_ACTIVE, state=StepState.PENDING, cancelling=True),
    "PENDING/timing_out": replace(_ACTIVE, state=StepState.PENDING, cancelling=True, timing_out=True),
    "RUNNING": replace(_ACTIVE, state=StepState.RUNNING, job_id="42", start_time=NOW),
    "RUNNING/cancelling": replace(_ACTIVE, state=StepState.RUNNING, job_id="42", start_time=NOW,
                                  cancelling=True),
    "RUNNING/timing_out": replace(_ACTIVE, state=StepState.RUNNING, job_id="42", start_time=NOW,
                                  cancelling=True, timing_out=True),
    **{s.value: replace(_ACTIVE, state=s, end_time=NOW) for s in TERMINAL_STATES},
}


def _row(**cells: str) -> dict[str, str]:
    """A table row: every event INVALID unless named."""
    return {**dict.fromkeys(EVENTS, INVALID), **cells}


_WHILE_CANCELLING = dict(cancel=SAME, cancel_lost_race=SAME, walltime=SAME, retry_timer=SAME)
_TERMINAL = _row(opened=SAME, dep_finished=SAME, dep_failed=SAME, dep_cancelled=SAME,
                 granted=SAME, cancel=SAME, cancel_lost_race=SAME, walltime=SAME,
                 retry_timer=SAME)

# What each (state/sub-state, event) pair leads to: a row name (state and sub-state
# flags), SAME or INVALID.
EXPECTED: dict[str, dict[str, str]] = {
    "INITIALIZED": _row(
        opened=SAME, dep_finished="WAITING/queued", dep_failed="FAILED",
        dep_cancelled="CANCELLED", cancel="CANCELLED", cancel_lost_race="CANCELLED",
        walltime=SAME, retry_timer=SAME, cache_hit="CACHED", attempt_lost=SAME),
    "WAITING/queued": _row(
        granted="PENDING", cancel="CANCELLED", cancel_lost_race="CANCELLED", walltime=SAME,
        retry_timer=SAME),
    "WAITING/backoff": _row(
        cancel="CANCELLED", cancel_lost_race="CANCELLED", walltime=SAME,
        retry_timer="WAITING/queued"),
    "PENDING": _row(
        started="RUNNING", exit0="FINISHED", exit1="FAILED", submit_failed="FAILED",
        cancel="PENDING/cancelling", cancel_lost_race="PENDING/cancelling", walltime=SAME,
        retry_timer=SAME),
    "PENDING/cancelling": _row(
        started="PENDING/cancelling", exit0="CANCELLED", exit1="CANCELLED",
        submit_failed="CANCELLED", **_WHILE_CANCELLING),
    "PENDING/timing_out": _row(
        started="PENDING/timing_out", exit0="WAITING/queued", exit1="WAITING/queued",
        submit_failed="FAILED", cancel="PENDING/cancelling",
        cancel_lost_race="PENDING/cancelling", walltime=SAME, retry_timer=SAME),
    "RUNNING": _row(
        exit0="FINISHED", exit1="FAILED", cancel="RUNNING/cancelling",
        cancel_lost_race="RUNNING/cancelling", walltime="RUNNING/timing_out",
        retry_timer=SAME),
    "RUNNING/cancelling": _row(exit0="CANCELLED", exit1="CANCELLED", **_WHILE_CANCELLING),
    "RUNNING/timing_out": _row(
        exit0="WAITING/queued", exit1="WAITING/queued", cancel="RUNNING/cancelling",
        cancel_lost_race="RUNNING/cancelling", walltime=SAME, retry_timer=SAME),
    **{s.value: _TERMINAL for s in TERMINAL_STATES},
}

# Pairs where the machine breaks its own invariants (xfail until fixed).
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _flags(rec: StepRecord) -> tuple[StepState, bool, bool, bool]:
    return rec.state, rec.queued, rec.cancelling, rec.timing_out


def check_invariants(rec: StepRecord) -> None:
    assert [] == invariant_violations(rec)
    if rec.state == StepState.RUNNING:
        assert rec.job_id


def test_the_table_covers_every_state_sub_state_and_event() -> None:
    assert set(ROWS) == set(EXPECTED)
    assert set(StepState) == {rec.state for rec in ROWS.values()}
    assert {(False, False, False), (True, False, False)} == {
        _flags(r)[1:] for r in ROWS.values() if r.state == StepState.WAITING}
    for state in ACTIVE_STATES:
        assert {(False, False, False), (False, True, False), (False, True, True)} == {
            _flags(r)[1:] for r in ROWS.values() if r.state == state}
    for row in EXPECTED.values():
        assert set(EVENTS) == set(row)
        assert {c for c in row.values() if c not in (SAME, INVALID)} <= set(ROWS)


@pytest.mark.parametrize("row", list(ROWS))
def test_every_row_of_the_table_is_a_sound_record(row: str) -> None:
    check_invariants(ROWS[row])


@pytest.mark.parametrize(
    ("row", "event_name"),
    [pytest.param(r, e, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(r, e)])]
                  if (r, e) in KNOWN_BUGS else []) for r in ROWS for e in EVENTS],
)
def test_each_state_event_pair_transitions_or_raises_invalid_transition(
    row: str, event_name: str
) -> None:
    rec, event = ROWS[row], EVENTS[event_name]
    expected = EXPECTED[row][event_name]
    if expected == INVALID:
        with pytest.raises(InvalidTransition) as info:
            decide(rec, event, now=NOW)
        assert ("b", rec.state, event) == (info.value.step, info.value.state, info.value.event)
        return
    new, _ = decide(rec, event, now=NOW)
    if expected == SAME:
        assert rec == new
    else:
        assert _flags(ROWS[expected]) == _flags(new)
        check_invariants(new)
        if event_name == "cancel_lost_race":
            assert new.lost_race


def test_root_step_asks_for_a_slot_when_the_study_opens() -> None:
    rec, cmds = decide(new_record("a", 0), StudyOpened(), now=NOW)
    assert StepState.WAITING == rec.state
    assert [PublishState.match(state=StepState.WAITING, previous=StepState.INITIALIZED, final=False),
            RequestSlot.match(step="a")] == cmds


def test_step_waits_for_every_parent_before_asking_for_a_slot() -> None:
    rec = new_record("c", 2)
    rec, cmds = decide(rec, DependencyEnded(dependency="a", state=StepState.FINISHED), now=NOW)
    assert (StepState.INITIALIZED, 1, []) == (rec.state, rec.remaining, cmds)
    rec, cmds = decide(rec, DependencyEnded(dependency="b", state=StepState.FINISHED), now=NOW)
    assert StepState.WAITING == rec.state
    assert [PublishState.match(state=StepState.WAITING),
            RequestSlot(step="c", scopes=("global",))] == cmds


def test_granted_step_is_submitted_as_its_next_attempt() -> None:
    rec, cmds = decide(ROWS["WAITING/queued"], SlotGranted(), now=NOW)
    assert (StepState.PENDING, 2, NOW) == (rec.state, rec.attempt, rec.submit_time)
    assert [PublishState.match(state=StepState.PENDING, attempt=2),
            SubmitJob(step="b", attempt=2, restart=False)] == cmds


def test_nonzero_exit_fails_the_step_and_releases_its_slot() -> None:
    rec, cmds = decide(ROWS["RUNNING"], JobExited(exit_code=3, time=NOW + 1), now=NOW + 1)
    assert (StepState.FAILED, 3, NOW + 1) == (rec.state, rec.exit_code, rec.end_time)
    assert [PublishState.match(state=StepState.FAILED, kind="exit_code", exit_code=3, job_id="42",
                               final=True),
            ReleaseSlot(step="b", scopes=("global",))] == cmds


def test_failed_parent_fails_the_child_with_kind_dependency() -> None:
    rec, cmds = decide(new_record("b", 2), EVENTS["dep_failed"], now=NOW)
    assert StepState.FAILED == rec.state
    assert [PublishState.match(state=StepState.FAILED, kind="dependency", final=True)] == cmds
    assert "a" in rec.reason


def test_cancelled_parent_cancels_the_child() -> None:
    rec, cmds = decide(new_record("b", 1), EVENTS["dep_cancelled"], now=NOW)
    assert StepState.CANCELLED == rec.state
    assert [PublishState.match(state=StepState.CANCELLED, final=True, lost_race=False)] == cmds


def test_cancelling_a_waiting_step_withdraws_its_slot_request() -> None:
    rec, cmds = decide(ROWS["WAITING/queued"], CancelRequested(), now=NOW)
    assert StepState.CANCELLED == rec.state
    assert [PublishState.match(state=StepState.CANCELLED, final=True),
            WithdrawSlotRequest(step="b")] == cmds


def test_cancelling_a_step_waiting_for_its_backoff_has_no_request_to_withdraw() -> None:
    rec, cmds = decide(ROWS["WAITING/backoff"], CancelRequested(), now=NOW)
    assert StepState.CANCELLED == rec.state
    assert [PublishState.match(state=StepState.CANCELLED, final=True)] == cmds


def test_cancelling_a_running_step_stops_its_job_then_records_cancelled_on_exit() -> None:
    rec, cmds = decide(ROWS["RUNNING"], CancelRequested(), now=NOW)
    assert [CancelJob(step="b", attempt=1)] == cmds
    rec2, cmds2 = decide(rec, CancelRequested(), now=NOW)
    assert (rec, []) == (rec2, cmds2), "cancelling twice changes nothing"
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=NOW), now=NOW)
    assert StepState.CANCELLED == rec.state
    assert [PublishState.match(state=StepState.CANCELLED, previous=StepState.RUNNING, final=True),
            ReleaseSlot(step="b", scopes=("global",))] == cmds


def test_a_running_step_that_lost_its_race_ends_cancelled_with_lost_race() -> None:
    rec, cmds = decide(ROWS["RUNNING"], CancelRequested(reason="race lost to x", lost_race=True),
                       now=NOW)
    assert [CancelJob(step="b", attempt=1)] == cmds
    assert (True, True) == (rec.cancelling, rec.lost_race)
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=NOW), now=NOW)
    assert (StepState.CANCELLED, True, "race lost to x") == (rec.state, rec.lost_race, rec.reason)
    assert [PublishState.match(state=StepState.CANCELLED, lost_race=True, reason="race lost to x",
                               final=True),
            ReleaseSlot.match(step="b")] == cmds


def test_a_lost_race_stop_outranks_a_clean_exit_but_a_finished_member_keeps_finished() -> None:
    rec, _ = decide(ROWS["RUNNING"], CancelRequested(lost_race=True), now=NOW)
    rec, cmds = decide(rec, JobExited(exit_code=0, time=NOW), now=NOW)
    assert (StepState.CANCELLED, True) == (rec.state, rec.lost_race), "the stop was asked for first"
    assert [PublishState.match(state=StepState.CANCELLED, lost_race=True), ReleaseSlot.match()] == cmds
    rec, cmds = decide(ROWS["FINISHED"], CancelRequested(lost_race=True), now=NOW)
    assert (ROWS["FINISHED"], []) == (rec, cmds)


def test_cancelling_a_finished_step_changes_nothing() -> None:
    rec = ROWS["FINISHED"]
    assert (rec, []) == decide(rec, CancelRequested(), now=NOW)


def test_grant_arriving_after_cancellation_gives_the_slot_back() -> None:
    rec = ROWS["CANCELLED"]
    assert (rec, [ReleaseSlot(step="b", scopes=("global",))]) == decide(rec, SlotGranted(), now=NOW)


def test_dry_run_step_becomes_dryrun_and_writes_its_script() -> None:
    rec, cmds = decide(new_record("a", 0, dry_run=True), StudyOpened(), now=NOW)
    assert StepState.DRYRUN == rec.state
    assert [WriteScript(step="a"), PublishState.match(state=StepState.DRYRUN, final=True)] == cmds


def test_submit_failure_is_data_with_kind_submit_rejected() -> None:
    rec, cmds = decide(ROWS["PENDING"], SubmitFailed(detail="exec format error"), now=NOW)
    assert StepState.FAILED == rec.state
    assert [PublishState.match(state=StepState.FAILED, kind="submit_rejected",
                               reason="exec format error", retryable=False, final=True),
            ReleaseSlot(step="b", scopes=("global",))] == cmds


def test_a_cache_hit_makes_a_waiting_step_cached_and_final_at_once() -> None:
    rec, cmds = decide(new_record("b", 2), CacheHit(), now=NOW)
    assert (StepState.CACHED, 0) == (rec.state, rec.remaining)
    assert [PublishState.match(state=StepState.CACHED, previous=StepState.INITIALIZED, final=True)] == cmds


def test_a_lost_attempt_is_published_failed_lost_and_leaves_the_record_as_it_was() -> None:
    rec = replace(new_record("b", 0), attempt=3)
    new, cmds = decide(rec, AttemptLost(attempt=3), now=NOW)
    assert rec == new, "the step starts over from INITIALIZED"
    assert [PublishState.match(step="b", state=StepState.FAILED, previous=StepState.RUNNING, attempt=3,
                               kind="lost", retryable=True, final=False)] == cmds


def test_a_retried_step_keeps_its_first_start_so_run_time_counts_every_attempt() -> None:
    from engine.machines.policy import StepPolicy
    from engine.spec.policy import RetryPolicy

    policy = StepPolicy(retry=RetryPolicy(max_attempts=2, initial_delay=0.0))
    rec = replace(ROWS["RUNNING"], policy=policy)
    rec, _ = decide(rec, JobExited(exit_code=1, time=NOW + 5), now=NOW + 5)
    assert StepState.WAITING == rec.state and NOW == rec.start_time
    rec, _ = decide(rec, SlotGranted(), now=NOW + 6)
    rec, _ = decide(rec, JobStarted(job_id="43", time=NOW + 7), now=NOW + 7)
    assert (StepState.RUNNING, 2, NOW) == (rec.state, rec.attempt, rec.start_time)
    rec, _ = decide(rec, JobExited(exit_code=0, time=NOW + 9), now=NOW + 9)
    assert (StepState.FINISHED, NOW, NOW + 9) == (rec.state, rec.start_time, rec.end_time)
