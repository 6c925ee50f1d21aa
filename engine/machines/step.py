"""The pure state machine of one step instance.

``decide(state, event, now=...)`` is the only place a step's state changes. It returns
the new ``StepRecord`` and the commands its shell must carry out (publish the change, ask
for a slot, submit or cancel a job). It imports no I/O library and never reads the clock.

Maestro's rules: a step runs when all its parents FINISHED (or were DRYRUN); a parent in a
failure state fails it (and so, transitively, the parent's whole subtree); a CANCELLED
parent cancels it.
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from engine.errors import InvalidTransition
from engine.messages import (
    ACTIVE_STATES,
    FAILURE_STATES,
    TERMINAL_STATES,
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
    StepState,
    StudyOpened,
    SubmitFailed,
    SubmitJob,
    WithdrawSlotRequest,
    WriteScript,
)

__all__ = ["StepRecord", "decide", "new_record"]

S = StepState


class StepRecord(Struct, frozen=True, kw_only=True):
    """Everything the engine knows about one step instance.

    Invariants (checked by ``check_invariants`` in the tests):
      * ``remaining`` is the number of parents not yet FINISHED/DRYRUN, >= 0;
      * a step in PENDING or RUNNING holds exactly one throttle slot;
      * ``attempt`` > 0 once the step has been submitted.
    """

    name: str
    state: StepState = S.INITIALIZED
    remaining: int = 0
    dry_run: bool = False
    attempt: int = 0
    job_id: str = ""
    exit_code: int | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    restarts: int = 0
    cancelling: bool = False
    reason: str = ""


def new_record(name: str, parents: int, *, dry_run: bool = False) -> StepRecord:
    """Return the initial record of a step with ``parents`` dependencies."""
    return StepRecord(name=name, remaining=parents, dry_run=dry_run)


def _enter(
    rec: StepRecord, state: StepState, now: float, **changes: object
) -> tuple[StepRecord, list[Command]]:
    """Move to ``state`` (with ``changes``) and publish the transition."""
    new = replace(rec, state=state, **changes)
    pub = PublishState(
        step=rec.name,
        state=state,
        previous=rec.state,
        attempt=new.attempt,
        time=now,
        job_id=new.job_id,
        exit_code=new.exit_code if state in (S.FINISHED, S.FAILED) else None,
        reason=new.reason,
    )
    return new, [pub]


def _ready(rec: StepRecord, now: float) -> tuple[StepRecord, list[Command]]:
    """All parents are done: go dry, or ask for a slot."""
    if rec.dry_run:
        new, cmds = _enter(rec, S.DRYRUN, now, end_time=now)
        return new, [WriteScript(step=rec.name), *cmds]
    new, cmds = _enter(rec, S.WAITING, now)
    return new, [*cmds, RequestSlot(step=rec.name)]


def _fail_by_dependency(
    rec: StepRecord, dep: str, dep_state: StepState, now: float
) -> tuple[StepRecord, list[Command]]:
    if dep_state == S.CANCELLED:
        state, reason = S.CANCELLED, f"dependency {dep} was cancelled"
    else:
        state, reason = S.FAILED, f"dependency {dep} ended {dep_state}"
    new = replace(rec, state=state, reason=reason, end_time=now)
    pub = PublishState(
        step=rec.name,
        state=state,
        previous=rec.state,
        attempt=rec.attempt,
        time=now,
        kind="dependency" if state == S.FAILED else "",
        reason=reason,
    )
    cmds: list[Command] = [pub]
    if rec.state == S.WAITING:
        cmds.append(WithdrawSlotRequest(step=rec.name))
    return new, cmds


def _on_dependency(
    rec: StepRecord, ev: DependencyEnded, now: float
) -> tuple[StepRecord, list[Command]]:
    if ev.state in (S.FINISHED, S.DRYRUN):
        rec = replace(rec, remaining=rec.remaining - 1)
        if rec.remaining == 0:
            return _ready(rec, now)
        return rec, []
    if ev.state in FAILURE_STATES or ev.state == S.CANCELLED:
        return _fail_by_dependency(rec, ev.dependency, ev.state, now)
    raise InvalidTransition(rec.name, rec.state, ev)


def _on_exit(rec: StepRecord, ev: JobExited) -> tuple[StepRecord, list[Command]]:
    release = ReleaseSlot(step=rec.name)
    if rec.cancelling:
        new = replace(rec, state=S.CANCELLED, exit_code=ev.exit_code, end_time=ev.time)
        pub = PublishState(
            step=rec.name, state=S.CANCELLED, previous=rec.state, attempt=rec.attempt,
            time=ev.time, job_id=rec.job_id, reason=rec.reason,
        )
        return new, [pub, release]
    ok = ev.outcome == "COMPLETED" if ev.outcome else ev.exit_code == 0
    state = S.FINISHED if ok else S.FAILED
    new = replace(rec, state=state, exit_code=ev.exit_code, end_time=ev.time)
    pub = PublishState(
        step=rec.name, state=state, previous=rec.state, attempt=rec.attempt, time=ev.time,
        job_id=rec.job_id, exit_code=ev.exit_code, kind="" if ok else "exit_code",
        reason="" if ok else (ev.detail or f"exit code {ev.exit_code}"),
    )
    return new, [pub, release]


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
        case CancelRequested() if state in TERMINAL_STATES:
            return rec, []  # cancelling a finished step changes nothing
        case DependencyEnded() if state in TERMINAL_STATES:
            return rec, []  # already decided (e.g. failed by another parent)
        case StudyOpened() if state == S.INITIALIZED:
            if rec.remaining == 0:
                return _ready(rec, now)
            return rec, []
        case StudyOpened() if state in TERMINAL_STATES:
            return rec, []
        case SlotGranted() if state in TERMINAL_STATES:
            # A grant that crossed this step's cancellation: give the slot back.
            return rec, [ReleaseSlot(step=rec.name)]
        case DependencyEnded() if state == S.INITIALIZED:
            return _on_dependency(rec, event, now)
        case CancelRequested() if state == S.INITIALIZED:
            return _enter(rec, S.CANCELLED, now, reason=event.reason, end_time=now)
        case CancelRequested() if state == S.WAITING:
            new, cmds = _enter(rec, S.CANCELLED, now, reason=event.reason, end_time=now)
            return new, [*cmds, WithdrawSlotRequest(step=rec.name)]
        case SlotGranted() if state == S.WAITING:
            attempt = rec.attempt + 1
            new, cmds = _enter(rec, S.PENDING, now, attempt=attempt, submit_time=now)
            return new, [*cmds, SubmitJob(step=rec.name, attempt=attempt)]
        case JobStarted() if state == S.PENDING and not rec.cancelling:
            return _enter(rec, S.RUNNING, now, job_id=event.job_id, start_time=event.time)
        case JobStarted() if state == S.PENDING:
            # Cancelled while the adapter was starting it: record the job, stay put
            # until the adapter reports the exit of the process it is stopping.
            return replace(rec, job_id=event.job_id, start_time=event.time), []
        case JobExited() if state in ACTIVE_STATES:
            return _on_exit(rec, event)
        case SubmitFailed() if state == S.PENDING:
            new = replace(rec, state=S.FAILED, reason=event.detail, end_time=now)
            pub = PublishState(
                step=rec.name, state=S.FAILED, previous=state, attempt=rec.attempt,
                time=now, kind="submit_rejected", retryable=event.retryable,
                reason=event.detail,
            )
            return new, [pub, ReleaseSlot(step=rec.name)]
        case CancelRequested() if state in ACTIVE_STATES:
            if rec.cancelling:
                return rec, []  # cancelling twice changes nothing
            new = replace(rec, cancelling=True, reason=event.reason)
            return new, [CancelJob(step=rec.name, attempt=rec.attempt)]
        case _:
            raise InvalidTransition(rec.name, state, event)
