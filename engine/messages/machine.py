"""The pure machines' inputs and outputs (``engine.messages``): events and commands."""

from __future__ import annotations

import msgspec

from engine.matching import Matchable
from engine.messages.core import FailureKind, JobOutcome, StepState, StudyState

class Event(Matchable, msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of the past-tense facts fed to the pure machines."""

    event_id: str = ""
    cause_id: str = ""


class StudyOpened(Event, tag="study_opened"):
    """The runtime is listening; steps without dependencies may start."""


class DependencyEnded(Event, tag="dependency_ended"):
    """A parent instance reached a terminal state."""

    dependency: str
    state: StepState
    soft: bool = False


class SlotGranted(Event, tag="slot_granted"):
    """The supervisor gave this step a throttle slot."""


class JobStarted(Event, tag="job_started"):
    """The adapter started the job; ``job_id`` is a pid or a scheduler id."""

    job_id: str
    time: float


class JobExited(Event, tag="job_exited"):
    """The job ended: ``outcome`` is how (None = judge by the exit code alone),
    ``exit_code`` negative if a signal killed it, None if unknown."""

    exit_code: int | None
    time: float
    outcome: JobOutcome | None = None
    detail: str = ""


class SubmitFailed(Event, tag="submit_failed"):
    """The adapter could not start the job at all."""

    detail: str
    retryable: bool = False


class CancelRequested(Event, tag="cancel_requested"):
    """Someone asked to cancel this step (or the whole study); ``lost_race``: another
    member of its race won."""

    reason: str = "cancelled"
    lost_race: bool = False


class CacheHit(Event, tag="cache_hit"):
    """An earlier study's FINISHED result with this step's cache key was copied in."""


class AttemptLost(Event, tag="attempt_lost"):
    """Recovery: attempt ``attempt`` was in flight when the engine stopped and left no
    trace; the step runs again as a new attempt."""

    attempt: int


class SlotRequested(Event, tag="slot_requested"):
    """Supervisor input: ``step`` wants a slot in each of ``scopes`` (``again``: for its
    next attempt, after a retry, restart or resubmission)."""

    step: str
    scopes: tuple[str, ...] = ("global",)
    again: bool = False


class SlotReleased(Event, tag="slot_released"):
    """Supervisor input: ``step`` gave its slots in ``scopes`` back."""

    step: str
    scopes: tuple[str, ...] = ("global",)


class SlotWithdrawn(Event, tag="slot_withdrawn"):
    """Supervisor input: ``step`` no longer wants the slot it asked for."""

    step: str


class ThrottleChanged(Event, tag="throttle_changed"):
    """Supervisor input: the throttle of ``scope`` is now ``limit`` (0 = unlimited)."""

    limit: int
    scope: str = "global"


class TimerFired(Event, tag="timer_fired"):
    """A timer a machine asked for (``StartTimer``) went off."""

    name: str
    attempt: int


class StepEnded(Event, tag="step_ended"):
    """Supervisor input: ``step`` reached the terminal ``state`` (seen on the bus)."""

    step: str
    state: StepState
    benign: bool = False  # a CANCELLED that is part of the plan (a lost race)


class SubmissionsPaused(Event, tag="submissions_paused"):
    """Supervisor input: grant no slot while ``paused`` (a draining engine)."""

    paused: bool = True


class StudyCancelRequested(Event, tag="study_cancel_requested"):
    """Supervisor input: someone asked to cancel the whole study (a second request
    kills whatever still runs)."""

    reason: str = "cancelled by user"


class StopRequested(Event, tag="stop_requested"):
    """Supervisor input: a step asked to stop the study (``StopStudy``)."""

    step: str
    reason: str


class RaceChecked(Event, tag="race_checked"):
    """Supervisor input: the race check of ``step`` (a FINISHED member) ran."""

    group: str
    step: str
    passed: bool


# ------------------------------------------------------------------- commands


class Command(Matchable, msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of the imperatives the machines return for their shells to carry out."""


class PublishState(Command, tag="publish_state"):
    """Publish this step's new state on the bus."""

    step: str
    state: StepState
    previous: StepState
    attempt: int
    time: float
    job_id: str = ""
    exit_code: int | None = None
    kind: FailureKind = ""
    retryable: bool = False
    reason: str = ""
    final: bool = False
    soft: bool = False
    lost_race: bool = False
    intent_attempt: int = 0  # the attempt a stored entry names (the next, while WAITING)


class RequestSlot(Command, tag="request_slot"):
    """Ask the supervisor for a slot in each of ``scopes`` (``again``: the step ran
    before; its next attempt goes before the first attempts still waiting)."""

    step: str
    scopes: tuple[str, ...] = ("global",)
    again: bool = False


class WithdrawSlotRequest(Command, tag="withdraw_slot_request"):
    """Tell the supervisor a slot asked for is no longer wanted."""

    step: str


class ReleaseSlot(Command, tag="release_slot"):
    """Give the held slots back."""

    step: str
    scopes: tuple[str, ...] = ("global",)


class GrantSlot(Command, tag="grant_slot"):
    """Supervisor output: tell ``step`` it may run."""

    step: str


class SubmitJob(Command, tag="submit_job"):
    """Write the step's script and start attempt ``attempt`` through its adapter
    (its ``restart`` script if ``restart``)."""

    step: str
    attempt: int
    restart: bool = False


class StartTimer(Command, tag="start_timer"):
    """Feed ``TimerFired(name, attempt)`` back to ``step`` after ``delay`` seconds."""

    step: str
    name: str
    attempt: int
    delay: float


class StopStudy(Command, tag="stop_study"):
    """Stop the whole study (a Merlin hard fail): cancel every other step."""

    step: str
    reason: str


class CancelJob(Command, tag="cancel_job"):
    """Stop attempt ``attempt`` of ``step`` (its process group or job)."""

    step: str
    attempt: int


class WriteScript(Command, tag="write_script"):
    """Write the step's script without running it (``--dry``)."""

    step: str


class CancelStep(Command, tag="cancel_step"):
    """Supervisor output: cancel ``step`` (a study cancel or stop, or a lost race)."""

    step: str
    reason: str
    lost_race: bool = False


class KillAllJobs(Command, tag="kill_all_jobs"):
    """Supervisor output: kill every job at once (a second cancel of the study)."""


class CheckRace(Command, tag="check_race"):
    """Supervisor output: run race ``group``'s check in the workspace of ``step``."""

    group: str
    step: str
    check: str


class EndStudy(Command, tag="end_study"):
    """Supervisor output: every step is terminal; the study ended in ``state``."""

    state: StudyState
    counts: dict[str, int] = {}
