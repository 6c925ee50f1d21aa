"""The step machine under the supervisor's policies: walltime, restarts, retries with
backoff, hardware failures and Merlin's exit codes, all with a fixed clock."""

from __future__ import annotations

import pytest

from engine.machines.policy import StepPolicy, backoff_delay, judge_exit
from engine.machines.step import StepRecord, decide, new_record
from engine.messages import (
    CancelJob,
    JobExited,
    JobOutcome,
    JobStarted,
    PublishState,
    RequestSlot,
    SlotGranted,
    StartTimer,
    StepState,
    StopStudy,
    StudyOpened,
    SubmitJob,
    TimerFired,
)
from engine.spec.policy import RetryPolicy, parse_walltime

T0 = 1_000.0


def start(policy: StepPolicy) -> StepRecord:
    """A root step, granted and running attempt 1."""
    rec, _ = decide(new_record("s", 0, policy=policy), StudyOpened(), now=T0)
    rec, _ = decide(rec, SlotGranted(), now=T0)
    rec, _ = decide(rec, JobStarted(job_id="7", time=T0), now=T0)
    return rec


def run_again(rec: StepRecord, now: float) -> tuple[StepRecord, list]:
    """From WAITING (queued): grant and start the next attempt."""
    assert (StepState.WAITING, True) == (rec.state, rec.queued)
    rec, cmds = decide(rec, SlotGranted(), now=now)
    submit = cmds[-1]
    rec, _ = decide(rec, JobStarted(job_id=str(rec.attempt), time=now), now=now)
    return rec, [submit]


def published(cmds: list) -> list[PublishState]:
    return [c for c in cmds if isinstance(c, PublishState)]


def pub(state: StepState, final: bool, **fields: object) -> object:
    """A partial matcher of the ``PublishState`` of ``state``."""
    return PublishState.match(state=state, final=final, **fields)


def test_walltime_timer_stops_the_job_and_restart_runs_the_restart_script() -> None:
    rec = start(StepPolicy(walltime=2.0, restart_limit=1))
    rec, cmds = decide(rec, TimerFired(name="walltime", attempt=1), now=T0 + 2)
    assert [CancelJob(step="s", attempt=1)] == cmds
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=T0 + 2.1), now=T0 + 2.1)
    assert [pub(StepState.TIMEDOUT, False, kind="timeout", retryable=True), pub(StepState.WAITING, False)
            ] == published(cmds)
    assert RequestSlot.match(step="s") == cmds[-1]
    rec, (submit,) = run_again(rec, T0 + 3)
    assert SubmitJob(step="s", attempt=2, restart=True) == submit
    assert 1 == rec.restarts
    rec, _ = decide(rec, TimerFired(name="walltime", attempt=2), now=T0 + 5)
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=T0 + 5), now=T0 + 5)
    assert [pub(StepState.TIMEDOUT, True, kind="timeout", retryable=False)] == published(cmds)


def test_stale_walltime_timer_of_an_earlier_attempt_is_ignored() -> None:
    rec = start(StepPolicy(walltime=2.0))
    assert (rec, []) == decide(rec, TimerFired(name="walltime", attempt=0), now=T0 + 9)


def test_restart_limit_zero_means_unlimited_restarts() -> None:
    rec = start(StepPolicy(walltime=1.0, restart_limit=0))
    for n in range(1, 6):
        rec, _ = decide(rec, TimerFired(name="walltime", attempt=rec.attempt), now=T0 + n)
        rec, _ = decide(rec, JobExited(exit_code=-9, time=T0 + n), now=T0 + n)
        rec, _ = run_again(rec, T0 + n)
    assert 5 == rec.restarts


def test_failed_exit_is_retried_with_exponential_backoff_then_fails() -> None:
    pol = StepPolicy(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, factor=2.0, cap=60,
                                       jitter=0.0))
    rec = start(pol)
    delays = []
    for n in (1, 2):
        rec, cmds = decide(rec, JobExited(exit_code=1, time=T0), now=T0)
        assert [pub(StepState.FAILED, False, kind="exit_code", retryable=True), pub(StepState.WAITING, False)
                ] == published(cmds)
        assert StartTimer.match(step="s", name="retry", attempt=rec.attempt) == cmds[-1]
        delays.append(cmds[-1].delay)
        assert not rec.queued, "no slot is asked for before the backoff ends"
        rec, cmds = decide(rec, TimerFired(name="retry", attempt=rec.attempt),
                           now=T0 + delays[-1])
        assert [RequestSlot.match(step="s")] == cmds
        rec, _ = run_again(rec, T0)
    assert [1.0, 2.0] == delays
    rec, cmds = decide(rec, JobExited(exit_code=1, time=T0), now=T0)
    assert [pub(StepState.FAILED, True, kind="exit_code", retryable=False)] == published(cmds)
    assert (3, 2) == (rec.attempt, rec.retries)


@pytest.mark.parametrize(("retry", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)])
def test_backoff_is_exponential_and_capped(retry: int, expected: float) -> None:
    pol = RetryPolicy(initial_delay=2.0, factor=2.0, cap=10.0, jitter=0.0)
    assert expected == backoff_delay(pol, retry)


def test_backoff_jitter_stays_within_bounds_and_is_reproducible() -> None:
    pol = RetryPolicy(initial_delay=10.0, factor=1.0, cap=10.0, jitter=0.2)
    delays = [backoff_delay(pol, n, key=f"step{k}") for n in range(1, 5) for k in range(50)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(set(delays)) > 10, "jitter varies between steps"
    assert delays == [backoff_delay(pol, n, key=f"step{k}") for n in range(1, 5) for k in range(50)]


def test_node_failure_is_resubmitted_up_to_the_limit() -> None:
    rec = start(StepPolicy(hw_limit=2))
    for _ in range(2):
        rec, cmds = decide(rec, JobExited(exit_code=None, outcome=JobOutcome.NODE_FAIL, time=T0), now=T0)
        assert [pub(StepState.HWFAILURE, False, kind="lost"), pub(StepState.WAITING, False)] == published(cmds)
        rec, _ = run_again(rec, T0)
    rec, cmds = decide(rec, JobExited(exit_code=None, outcome=JobOutcome.NODE_FAIL, time=T0), now=T0)
    assert [pub(StepState.HWFAILURE, True, kind="lost")] == published(cmds)


MERLIN = StepPolicy(merlin=True, max_retries=2, retry_delay=0.5)


@pytest.mark.parametrize(("code", "use_restart"), [(100, True), (104, False)])
def test_merlin_restart_and_retry_run_again_after_retry_delay_up_to_max_retries(
    code: int, use_restart: bool
) -> None:
    rec = start(MERLIN)
    for _ in range(2):
        rec, cmds = decide(rec, JobExited(exit_code=code, time=T0), now=T0)
        assert StartTimer(step="s", name="retry", attempt=rec.attempt, delay=0.5) == cmds[-1]
        rec, _ = decide(rec, TimerFired(name="retry", attempt=rec.attempt), now=T0 + 0.5)
        rec, (submit,) = run_again(rec, T0 + 0.5)
        assert use_restart == submit.restart
    rec, cmds = decide(rec, JobExited(exit_code=code, time=T0), now=T0)
    assert [pub(StepState.FAILED, True, kind="exit_code")] == published(cmds)
    assert "max_retries" in rec.reason


def test_merlin_soft_fail_is_a_final_failure_marked_soft() -> None:
    rec, cmds = decide(start(MERLIN), JobExited(exit_code=101, time=T0), now=T0)
    assert StepState.FAILED == rec.state
    assert [pub(StepState.FAILED, True, soft=True)] == published(cmds)


@pytest.mark.parametrize("code", [102, 105])
def test_merlin_hard_fail_and_stop_workers_stop_the_study(code: int) -> None:
    rec, cmds = decide(start(MERLIN), JobExited(exit_code=code, time=T0), now=T0)
    assert StepState.FAILED == rec.state
    assert StopStudy.match(step="s") == cmds[-1]


def test_merlin_codes_mean_nothing_special_in_a_maestro_spec() -> None:
    rec, cmds = decide(start(StepPolicy()), JobExited(exit_code=104, time=T0), now=T0)
    assert [pub(StepState.FAILED, True, soft=False)] == published(cmds)
    assert not any(isinstance(c, StopStudy) for c in cmds)


def test_cancel_during_a_walltime_stop_ends_cancelled_not_restarted() -> None:
    from engine.messages import CancelRequested

    rec = start(StepPolicy(walltime=1.0, restart_limit=3))
    rec, _ = decide(rec, TimerFired(name="walltime", attempt=1), now=T0 + 1)
    rec, cmds = decide(rec, CancelRequested(reason="user"), now=T0 + 1)
    assert [] == cmds
    rec, cmds = decide(rec, JobExited(exit_code=-15, time=T0 + 1), now=T0 + 1)
    assert [pub(StepState.CANCELLED, True, reason="user")] == published(cmds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:02", 2.0), ("1:30", 90.0), ("5", 300.0), (5, 300.0), ("1-00:00:01", 86401.0),
     ("2-3", 2 * 86400 + 3 * 3600.0), ("0", None), (None, None)],
)
def test_walltime_parses_like_slurm_time(text: object, seconds: float | None) -> None:
    assert seconds == parse_walltime(text)  # type: ignore[arg-type]


def test_walltime_rejects_garbage() -> None:
    with pytest.raises(ValueError, match=r"^invalid literal"):
        parse_walltime("ten minutes")


def test_judge_exit_without_an_outcome_judges_by_exit_code() -> None:
    after = judge_exit(StepPolicy(), step="s", outcome=None, exit_code=0, cancelling=False,
                       timing_out=False, restarts=0, retries=0, merlin_retries=0, hw_failures=0)
    assert "finished" == after.kind


def test_judge_exit_names_the_ended_attempts_state_as_a_step_state() -> None:
    after = judge_exit(StepPolicy(), step="s", outcome=JobOutcome.TIMEOUT, exit_code=None,
                       cancelling=False, timing_out=False, restarts=0, retries=0,
                       merlin_retries=0, hw_failures=0)
    assert ("again", StepState.TIMEDOUT) == (after.kind, after.state_seen)
    assert isinstance(after.state_seen, StepState)
