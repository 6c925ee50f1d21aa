"""The pure state machine of one step instance.

``decide(record, event, now=...)`` is the only place a step's state changes. It returns
the new ``StepRecord`` and the commands its shell must carry out (publish the change, ask
for or give back throttle slots, submit or cancel a job, start a timer). It imports no I/O
library and never reads the clock: waits are ``StartTimer`` commands that come back as
``TimerFired`` events.

Maestro's rules: a step runs when all its parents FINISHED (or were DRYRUN, or soft-failed
under Merlin's protocol); a parent in a failure state fails it (and so, transitively, the
parent's whole subtree); a CANCELLED parent cancels it; a SKIPPED parent skips it. A step
with a ``when:`` condition instead judges the condition each time a parent ends
(``engine.machines.conditions``): TRUE runs it, FALSE skips it (SKIPPED), CANCELLED
cancels it, and it keeps waiting while undecided. What happens after a job ends
(retry, restart, resubmission, final state) is the supervisor's policy
(``engine.machines.policy.judge_exit``). A step whose cache key matched an earlier result
(``CacheHit``) becomes CACHED without running; recovery reports an attempt that vanished
with the engine (``AttemptLost``) before the step runs again.

Sub-states. Three flags refine a state without being states of their own, because no
event distinguishes them from the outside (``status.csv`` and the bus show the state):
  * ``queued`` (WAITING only): a slot request is outstanding. WAITING without it waits
    for a retry's backoff timer.
  * ``cancelling`` (PENDING/RUNNING only): the job is being stopped; its exit makes the
    step CANCELLED (or TIMEDOUT, with ``timing_out``).
  * ``timing_out`` (only with ``cancelling``): the stop is for the walltime.
``invariant_violations`` checks them; the table test covers every (state, sub-state,
event) triple.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from msgspec import Struct
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.machines.conditions import ConditionVerdict, evaluate
from engine.machines.policy import StepPolicy, judge_exit
from engine.messages import (
    ACTIVE_STATES,
    FAILURE_STATES,
    TERMINAL_STATES,
    AttemptLost,
    CacheHit,
    CancelJob,
    CancelRequested,
    Command,
    DependencyEnded,
    Event,
    JobExited,
    JobStarted,
    PublishState,
    ReleaseSlot,
    RequestSlot,
    SlotGranted,
    StartTimer,
    StepState,
    StopStudy,
    StudyOpened,
    SubmitFailed,
    SubmitJob,
    TimerFired,
    WithdrawSlotRequest,
    WriteScript,
)
from engine.spec.conditions import Expr

if TYPE_CHECKING:
    from engine.store import StepEntry

__all__ = ["StepRecord", "decide", "invariant_violations", "new_record", "next_attempt"]

_END_STATES = {
    "finished": StepState.FINISHED,
    "failed": StepState.FAILED,
    "cancelled": StepState.CANCELLED,
    "timedout": StepState.TIMEDOUT,
    "hwfailure": StepState.HWFAILURE,
}


class StepRecord(Struct, frozen=True, kw_only=True):
    """Everything the engine knows about one step instance.

    Invariants (``invariant_violations``, checked in the tests):
      * ``remaining`` is the number of parents not yet done, >= 0;
      * a step in PENDING or RUNNING holds exactly one set of throttle slots, unless
        ``slotless`` (an attempt its backend ran in a batch: a sample's first);
      * ``attempt`` > 0 once the step has been submitted;
      * ``queued`` is True only in WAITING, while a slot request is outstanding;
      * ``cancelling`` only in PENDING/RUNNING; ``timing_out`` only with ``cancelling``;
      * ``lost_race`` only in CANCELLED or while ``cancelling``.
    """

    name: str
    policy: StepPolicy = StepPolicy()
    state: StepState = StepState.INITIALIZED
    remaining: int = 0
    dry_run: bool = False
    attempt: int = 0
    job_id: str = ""
    exit_code: int | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    restarts: int = 0
    retries: int = 0
    merlin_retries: int = 0
    hw_failures: int = 0
    use_restart: bool = False
    queued: bool = False
    cancelling: bool = False
    timing_out: bool = False
    lost_race: bool = False
    slotless: bool = False
    reason: str = ""
    condition: Expr | None = None
    parent_steps: dict[str, tuple[str, ...]] = {}
    dep_states: dict[str, str] = {}

    def restore(self, entry: StepEntry) -> StepRecord:
        """This (fresh) record with the history a stored entry kept: attempts, job, times,
        counters, reason. The state is left to the caller (recovery decides it); the
        mapping the other way is ``StepEntry.from_record``."""
        return replace(
            self, attempt=entry.attempt, job_id=entry.job_id, exit_code=entry.exit_code,
            submit_time=entry.submit_time, start_time=entry.start_time,
            end_time=entry.end_time, restarts=entry.restarts, retries=entry.retries,
            merlin_retries=entry.merlin_retries, hw_failures=entry.hw_failures,
            use_restart=entry.use_restart, reason=entry.reason, lost_race=entry.lost_race,
        )


def new_record(
    name: str, parents: int, *, dry_run: bool = False, policy: StepPolicy | None = None,
    condition: Expr | None = None, parent_steps: dict[str, tuple[str, ...]] | None = None,
) -> StepRecord:
    """Return the initial record of a step with ``parents`` dependencies.

    Args:
        name: The instance name.
        parents: How many parent instances it waits for.
        dry_run: Write the script only.
        policy: The supervisor's policy for it.
        condition: Its parsed ``when:`` condition (None: Maestro's rule).
        parent_steps: For a condition: spec step name -> its parent instance names.
    """
    return StepRecord(name=name, remaining=parents, dry_run=dry_run, policy=policy or StepPolicy(),
                      condition=condition, parent_steps=parent_steps or {})


def next_attempt(rec: StepRecord) -> int:
    """The attempt a stored entry of ``rec`` names as its intent: a WAITING step already
    names the attempt it will make (so its slot is not held up by that write later),
    any other the one it made last."""
    return rec.attempt + 1 if rec.state == StepState.WAITING else rec.attempt


def invariant_violations(rec: StepRecord) -> list[str]:
    """The invariants of ``StepRecord`` that ``rec`` breaks (empty when it is sound)."""
    bad = []
    if rec.remaining < 0:
        bad.append("remaining < 0")
    if rec.state in ACTIVE_STATES and rec.attempt < 1:
        bad.append("active without an attempt")
    if rec.queued and rec.state != StepState.WAITING:
        bad.append("queued outside WAITING")
    if rec.cancelling and rec.state not in ACTIVE_STATES:
        bad.append("cancelling outside PENDING/RUNNING")
    if rec.timing_out and not rec.cancelling:
        bad.append("timing_out without cancelling")
    if rec.lost_race and not (rec.state == StepState.CANCELLED or rec.cancelling):
        bad.append("lost_race outside CANCELLED")
    if rec.slotless and rec.state not in ACTIVE_STATES:
        bad.append("slotless outside PENDING/RUNNING")
    return bad


def _publish(
    rec: StepRecord, previous: StepState, now: float, *, final: bool | None = None,
    **extra: object,
) -> PublishState:
    """The event for ``rec``'s current state; final unless told otherwise if terminal."""
    return PublishState(
        step=rec.name, state=rec.state, previous=previous, attempt=rec.attempt, time=now,
        job_id=rec.job_id, reason=rec.reason, lost_race=rec.lost_race,
        final=rec.state in TERMINAL_STATES if final is None else final,
        **extra,  # type: ignore[arg-type]
    )


def _enter(
    rec: StepRecord, state: StepState, now: float, **changes: object
) -> tuple[StepRecord, list[Command]]:
    """Move to ``state`` (with ``changes``) and publish the transition."""
    new = replace(rec, state=state, **changes)
    return new, [_publish(new, rec.state, now)]


def _request(rec: StepRecord) -> tuple[StepRecord, list[Command]]:
    # A step that ran before (a retry, restart or resubmission) held a slot a moment ago:
    # its next attempt goes first (a lost task is re-run within the loss timeout).
    return replace(rec, queued=True), [RequestSlot(step=rec.name, scopes=rec.policy.scopes,
                                                   again=rec.attempt > 0)]


def _ready(rec: StepRecord, now: float) -> tuple[StepRecord, list[Command]]:
    """All parents are done: go dry, or ask for a slot."""
    if rec.dry_run:
        new, cmds = _enter(rec, StepState.DRYRUN, now, end_time=now)
        return new, [WriteScript(step=rec.name), *cmds]
    new, cmds = _enter(rec, StepState.WAITING, now)
    new, req = _request(new)
    return new, [*cmds, *req]


def _on_condition(
    rec: StepRecord, ev: DependencyEnded, now: float
) -> tuple[StepRecord, list[Command]]:
    """A step with ``when:``: record the parent's state and judge the condition."""
    assert rec.condition is not None
    rec = replace(rec, dep_states={**rec.dep_states, ev.dependency: ev.state.value},
                  remaining=rec.remaining - 1)
    parents, seen = rec.parent_steps, rec.dep_states

    def states(ref: str) -> list[str | None]:
        step = funnel_step(ref) if "*" in ref else ref
        return [seen.get(inst) for inst in parents.get(step, ())]

    verdict = evaluate(rec.condition, states)
    if verdict == ConditionVerdict.TRUE:
        return _ready(rec, now)
    if verdict == ConditionVerdict.FALSE:
        return _enter(rec, StepState.SKIPPED, now, end_time=now,
                      reason="condition can no longer hold")
    if verdict == ConditionVerdict.CANCELLED:
        return _enter(rec, StepState.CANCELLED, now, end_time=now, reason="condition was cancelled")
    return rec, []


def funnel_step(ref: str) -> str:
    """The step a funnel pattern names (``sim_*`` and ``sim*`` are ``sim``, as in Maestro)."""
    return re.sub(r"_\*|\*", "", ref)


def _on_dependency(
    rec: StepRecord, ev: DependencyEnded, now: float
) -> tuple[StepRecord, list[Command]]:
    if rec.condition is not None:
        return _on_condition(rec, ev, now)
    if ev.state == StepState.SKIPPED:
        return _enter(rec, StepState.SKIPPED, now, end_time=now,
                      reason=f"dependency {ev.dependency} was skipped")
    if ev.state in (StepState.FINISHED, StepState.DRYRUN, StepState.CACHED) or (
        ev.state == StepState.FAILED and ev.soft
    ):
        rec = replace(rec, remaining=rec.remaining - 1)
        return _ready(rec, now) if rec.remaining == 0 else (rec, [])
    if ev.state == StepState.CANCELLED:
        return _enter(rec, StepState.CANCELLED, now, end_time=now,
                      reason=f"dependency {ev.dependency} was cancelled")
    if ev.state in FAILURE_STATES:
        new = replace(rec, state=StepState.FAILED, end_time=now,
                      reason=f"dependency {ev.dependency} ended {ev.state}")
        return new, [_publish(new, rec.state, now, kind="dependency")]
    raise InvalidTransition(rec.name, rec.state, ev)


def _on_exit(rec: StepRecord, ev: JobExited) -> tuple[StepRecord, list[Command]]:
    pol = rec.policy
    verdict = judge_exit(
        pol, step=rec.name, outcome=ev.outcome, exit_code=ev.exit_code,
        cancelling=rec.cancelling, timing_out=rec.timing_out, restarts=rec.restarts,
        retries=rec.retries, merlin_retries=rec.merlin_retries, hw_failures=rec.hw_failures,
    )
    release: list[Command] = [] if rec.slotless else [ReleaseSlot(step=rec.name, scopes=pol.scopes)]
    now = ev.time
    base = replace(rec, exit_code=ev.exit_code, cancelling=False, timing_out=False,
                   lost_race=rec.lost_race and verdict.kind == "cancelled", slotless=False)
    if verdict.kind != "again":
        state = _END_STATES[verdict.kind]
        reason = rec.reason if verdict.kind == "cancelled" and rec.cancelling else verdict.reason
        new = replace(base, state=state, end_time=now, reason=reason)
        pub = _publish(new, rec.state, now, exit_code=ev.exit_code, kind=verdict.failure,
                       soft=verdict.soft)
        cmds: list[Command] = [pub, *release]
        if verdict.stop_study:
            cmds.append(StopStudy(step=rec.name, reason=f"{rec.name}: {verdict.reason}"))
        return new, cmds
    # Another attempt: report how this one ended, then wait (backoff) or queue at once.
    counters = {
        "restarts": {"restarts": rec.restarts + 1},
        "retries": {"retries": rec.retries + 1},
        "merlin": {"merlin_retries": rec.merlin_retries + 1},
        "hw": {"hw_failures": rec.hw_failures + 1},
    }[verdict.counter]
    seen = replace(base, state=verdict.state_seen, reason=verdict.reason)
    pub_seen = _publish(seen, rec.state, now, final=False, exit_code=ev.exit_code,
                        kind=verdict.failure, retryable=True)
    use_restart = verdict.use_restart or (verdict.counter == "hw" and rec.use_restart)
    # start_time stays the first attempt's: status.csv's Run Time counts every attempt
    # (Maestro's does: from the first start to the end, restarts' waits included).
    waiting = replace(seen, state=StepState.WAITING, use_restart=use_restart, job_id="",
                      **counters)  # type: ignore[arg-type]
    cmds = [pub_seen, *release, _publish(waiting, seen.state, now)]
    if verdict.delay > 0:
        cmds.append(StartTimer(step=rec.name, name="retry", attempt=rec.attempt,
                               delay=verdict.delay))
        return waiting, cmds
    waiting, req = _request(waiting)
    return waiting, [*cmds, *req]


def _on_timer(rec: StepRecord, ev: TimerFired) -> tuple[StepRecord, list[Command]]:
    if ev.attempt != rec.attempt:
        return rec, []  # a timer of an earlier attempt
    if ev.name == "walltime" and rec.state == StepState.RUNNING and not rec.cancelling:
        new = replace(rec, cancelling=True, timing_out=True, reason="walltime exceeded")
        return new, [CancelJob(step=rec.name, attempt=rec.attempt)]
    if ev.name == "retry" and rec.state == StepState.WAITING and not rec.queued:
        return _request(rec)
    return rec, []  # the wait it was for is over (e.g. the job already ended)


def decide(
    rec: StepRecord, event: Event, *, now: float
) -> tuple[StepRecord, list[Command]]:
    """Apply ``event`` to a step's record.

    Args:
        rec: The step's current record.
        event: What happened.
        now: The current time (seconds since the epoch), used for state times.

    Returns:
        The new record and the commands to carry out, in order.

    Raises:
        InvalidTransition: ``event`` cannot happen in ``rec.state``.
    """
    state = rec.state
    match event:
        case TimerFired():
            return _on_timer(rec, event)
        case CancelRequested() | DependencyEnded() | StudyOpened() if state in TERMINAL_STATES:
            return rec, []  # already decided: cancelling a finished step changes nothing
        case SlotGranted() if state in TERMINAL_STATES:
            # A grant that crossed this step's cancellation: give the slots back.
            return rec, [ReleaseSlot(step=rec.name, scopes=rec.policy.scopes)]
        case StudyOpened() if state == StepState.INITIALIZED:
            return _ready(rec, now) if rec.remaining == 0 else (rec, [])
        case DependencyEnded() if state == StepState.INITIALIZED:
            return _on_dependency(rec, event, now)
        case DependencyEnded() if rec.condition is not None:
            return rec, []  # decided early (e.g. 'a.completed or b.completed'): b is late
        case CancelRequested() if state == StepState.INITIALIZED:
            return _enter(rec, StepState.CANCELLED, now, reason=event.reason, end_time=now,
                          lost_race=event.lost_race)
        case CancelRequested() if state == StepState.WAITING:
            new, cmds = _enter(rec, StepState.CANCELLED, now, reason=event.reason, end_time=now,
                               queued=False, lost_race=event.lost_race)
            if rec.queued:
                cmds.append(WithdrawSlotRequest(step=rec.name))
            return new, cmds
        case SlotGranted() if state == StepState.WAITING and rec.queued:
            attempt = rec.attempt + 1
            new, cmds = _enter(rec, StepState.PENDING, now, attempt=attempt, submit_time=now,
                               queued=False, end_time=None, exit_code=None)
            return new, [*cmds, SubmitJob(step=rec.name, attempt=attempt, restart=rec.use_restart)]
        case JobStarted() if state == StepState.PENDING and not rec.cancelling:
            new, cmds = _enter(rec, StepState.RUNNING, now, job_id=event.job_id,
                               start_time=rec.start_time if rec.start_time is not None
                               else event.time)
            if rec.policy.walltime:
                cmds.append(StartTimer(step=rec.name, name="walltime", attempt=rec.attempt,
                                       delay=rec.policy.walltime))
            return new, cmds
        case JobStarted() if state == StepState.PENDING:
            # Cancelled while the adapter was starting it: record the job, stay put
            # until the adapter reports the exit of the process it is stopping.
            return replace(rec, job_id=event.job_id, start_time=event.time), []
        case JobExited() if state in ACTIVE_STATES:
            return _on_exit(rec, event)
        case SubmitFailed() if state == StepState.PENDING:
            release = [] if rec.slotless else [ReleaseSlot(step=rec.name, scopes=rec.policy.scopes)]
            if rec.cancelling and not rec.timing_out:
                # Cancelled while being submitted, and it never started: as asked.
                new = replace(rec, state=StepState.CANCELLED, end_time=now, cancelling=False,
                              slotless=False)
                return new, [_publish(new, state, now), *release]
            new = replace(rec, state=StepState.FAILED, reason=event.detail, end_time=now,
                          cancelling=False, timing_out=False, lost_race=False, slotless=False)
            pub = _publish(new, state, now, kind="submit_rejected", retryable=event.retryable)
            return new, [pub, *release]
        case CancelRequested() if state in ACTIVE_STATES:
            if rec.cancelling and not rec.timing_out:
                return rec, []  # cancelling twice changes nothing
            new = replace(rec, cancelling=True, timing_out=False, reason=event.reason,
                          lost_race=event.lost_race)
            if rec.cancelling:
                return new, []  # already being stopped (for its walltime): now for good
            return new, [CancelJob(step=rec.name, attempt=rec.attempt)]
        case CacheHit() if state == StepState.INITIALIZED:
            return _enter(rec, StepState.CACHED, now, remaining=0,
                          reason="reused from an earlier study with the same cache key")
        case AttemptLost(attempt=attempt) if state == StepState.INITIALIZED:
            # The step itself starts over (INITIALIZED); the lost attempt is reported.
            return rec, [PublishState(
                step=rec.name, state=StepState.FAILED, previous=StepState.RUNNING, attempt=attempt, time=now,
                kind="lost", retryable=True,
                reason="the attempt was lost with the engine; running it again")]
        case _:
            raise InvalidTransition(rec.name, state, event)
