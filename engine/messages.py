"""Every message the engine's actors exchange: bus events, machine events and commands.

All are frozen, tagged msgspec Structs. Bus messages (``BusMessage`` subclasses) travel
as JSON on NATS and are public (``docs/events.md``); machine events and commands are the
inputs and outputs of the pure ``decide`` functions in ``engine.machines``. Evolution
follows msgspec's rules: new fields get defaults, fields are never renamed or retyped,
tags never change, and every bus message carries ``schema_version``.
"""

from __future__ import annotations

import enum
import itertools
import os
from typing import Literal

import msgspec

from engine.matching import Matchable

__all__ = [  # fmt: skip
    "ACTIVE_STATES", "AnyBusMessage", "AttemptLost", "BUS_DECODER", "BusMessage",
    "CacheHit", "CancelJob", "CancelRequested", "CancelStep", "CancelSteps", "CheckRace",
    "Command", "ControlReply", "DependencyEnded", "ENCODER", "EndStudy", "Event",
    "EventsReply", "EventsRequest", "FAILURE_STATES", "FailureKind", "GrantSlot",
    "JobExited", "JobOutcome", "JobReported", "JobStarted", "KillAllJobs", "PublishState",
    "RaceChecked", "ReleaseSlot", "RequestSlot", "RestartRequest", "SCHEMA_VERSION", "SamplesChanged",
    "SetThrottle", "SlotGranted", "SlotReleased", "SlotRequested", "SlotWithdrawn",
    "StartTimer", "StatusReply", "StatusRequest", "StepEnded", "StepState",
    "StepStateChanged", "StepSummary", "StopRequested", "StopStudy", "StudyCancelRequested",
    "StudyEnded", "StudyOpened", "StudyStarted", "StudyState", "StudySummary",
    "SubmissionsPaused", "SubmitFailed", "SubmitJob", "SubmitReply", "SubmitRequest",
    "TERMINAL_STATES", "ThrottleChanged", "TimerFired", "WithdrawSlotRequest",
    "WriteScript", "new_event_id",
]

SCHEMA_VERSION = 1

_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_event_id() -> str:
    """Return a process-unique event id (random 8-hex prefix + a counter)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


class StepState(enum.StrEnum):
    """A step instance's state; names are Maestro's (``status.csv`` shows them)."""

    INITIALIZED = "INITIALIZED"  # waiting for its dependencies
    WAITING = "WAITING"  # dependencies met, waiting for a throttle slot
    PENDING = "PENDING"  # handed to its adapter, not yet running
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    TIMEDOUT = "TIMEDOUT"
    HWFAILURE = "HWFAILURE"
    UNKNOWN = "UNKNOWN"
    CANCELLED = "CANCELLED"
    DRYRUN = "DRYRUN"
    SKIPPED = "SKIPPED"  # its when: condition can no longer become true
    CACHED = "CACHED"  # reused from an earlier study (--reuse): same cache key, FINISHED


class JobOutcome(enum.StrEnum):
    """How a job ended, in the backend's terms mapped to one vocabulary (adapters report it
    in ``adapters.base.JobResult``; the supervisor's policy judges it)."""

    COMPLETED = "COMPLETED"  # exit code 0
    FAILED = "FAILED"  # non-zero exit code (or killed by a signal)
    TIMEOUT = "TIMEOUT"  # the backend's own time limit killed it
    CANCELLED = "CANCELLED"  # cancelled (by us or by someone else)
    NODE_FAIL = "NODE_FAIL"  # hardware failure; Maestro resubmits
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    LOST = "LOST"  # the backend no longer knows the job and no exit status was recorded


class StudyState(enum.StrEnum):
    """A study's state, with Maestro's exit codes (see ``exit_code``)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    @property
    def exit_code(self) -> int:
        """``enginectl run``'s exit code for a study that ended in this state."""
        return {"FINISHED": 0, "FAILURE": 2, "CANCELLED": 3}.get(self.value, 1)


TERMINAL_STATES = frozenset({
    StepState.FINISHED, StepState.FAILED, StepState.TIMEDOUT, StepState.HWFAILURE,
    StepState.UNKNOWN, StepState.CANCELLED, StepState.DRYRUN, StepState.SKIPPED, StepState.CACHED,
})
"""States a step never leaves in this run."""

FAILURE_STATES = frozenset(
    {StepState.FAILED, StepState.TIMEDOUT, StepState.HWFAILURE, StepState.UNKNOWN}
)
"""Terminal states that fail a step's descendants (Maestro's rule)."""

ACTIVE_STATES = frozenset({StepState.PENDING, StepState.RUNNING})
"""States in which a step holds a throttle slot and may own a process or job."""

FailureKind = Literal["", "exit_code", "timeout", "lost", "submit_rejected", "dependency"]


# --------------------------------------------------------------------------- bus


class BusMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every message published on NATS (JSON on the wire)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    cause_id: str = ""


class StepStateChanged(BusMessage, tag="step_state_changed"):
    """A step instance entered ``state``. Published for every transition.

    Attributes:
        study_id: The study's id.
        step: The instance name (raw, as in status.csv).
        attempt: 1 for the first submission; 0 before any.
        state: The new state.
        previous: The state it left.
        time: Seconds since the epoch when the engine made the transition.
        job_id: The pid (local) or scheduler job id, once known.
        exit_code: The job's exit code, for FINISHED and FAILED by exit code.
        kind: For failures, why: exit_code, timeout, lost, submit_rejected, dependency.
        retryable: Whether the supervisor will run the step again (then ``final`` is
            False and the next event is WAITING).
        reason: Human-readable detail (e.g. the failed dependency's name).
        final: The step will not change state again in this run.
        soft: A Merlin soft fail: the step FAILED but its descendants still run.
        lost_race: A CANCELLED race member that another member beat (part of the
            plan: it does not make the study CANCELLED).
    """

    study_id: str
    step: str
    attempt: int
    state: StepState
    previous: StepState
    time: float
    job_id: str = ""
    exit_code: int | None = None
    kind: FailureKind = ""
    retryable: bool = False
    reason: str = ""
    final: bool = False
    soft: bool = False
    lost_race: bool = False


class SamplesChanged(BusMessage, tag="samples_changed"):
    """Samples of a sampled step (Merlin) entered ``state``: one message per step and
    state for what happened since the last one (sent every 0.2 s at most), not one per
    sample. ``samples`` are the 0-based sample ids (``$(MERLIN_SAMPLE_ID)``)."""

    study_id: str
    step: str
    state: StepState
    samples: tuple[int, ...]
    time: float


class StudyStarted(BusMessage, tag="study_started"):
    """A study began running (or dry-running)."""

    study_id: str
    name: str
    study_dir: str
    spec_path: str
    steps: int
    time: float
    dry_run: bool = False


class StudyEnded(BusMessage, tag="study_ended"):
    """Every step of a study reached a terminal state; ``counts`` is steps per state."""

    study_id: str
    state: StudyState
    time: float
    counts: dict[str, int] = {}


class CancelSteps(BusMessage, tag="cancel_steps"):
    """Control request: cancel the steps whose instance or step name matches ``glob``
    (and, through propagation, their descendants); an empty glob cancels the study."""

    study_id: str
    glob: str = ""
    reason: str = "cancelled by request"


class SetThrottle(BusMessage, tag="set_throttle"):
    """Control request: set the throttle of ``scope`` (``global``, ``adapter:<name>``,
    ``group:<name>``) to ``limit`` (0 = unlimited) while the study runs."""

    study_id: str
    limit: int
    scope: str = "global"


class ControlReply(BusMessage, tag="control_reply"):
    """The answer to a control request."""

    ok: bool
    detail: str = ""
    matched: int = 0


class SubmitRequest(BusMessage, tag="submit_request"):
    """API: run a study. The engine reads nothing from the client's disk but the spec's
    own references (``$(SPECROOT)`` files, git and path dependencies, a pgen file).

    Attributes:
        spec_text: The spec as the client read it.
        spec_path: Its absolute path on the client (sets ``$(SPECROOT)`` and the copy's name).
        cwd: The client's working directory (a relative OUTPUT_PATH or ``-o`` is resolved
            against it, as ``run`` does).
        out_dir: ``-o DIR``, or "" for ``<OUTPUT_PATH>/<name>_<timestamp>``.
        reuse: An earlier study directory whose FINISHED steps with the same cache key
            are reused (CACHED), as ``run --reuse``; "" for none.
        use_cache: False (``--no-cache``): neither record nor reuse cache keys.
        request_id: Made by the client; a submit sent again with the same id (a retry)
            gets the first one's answer, never a second study.
    """

    spec_text: str
    spec_path: str
    cwd: str
    out_dir: str = ""
    throttle: int | None = None
    rlimit: int | None = None
    attempts: int | None = None
    dry_run: bool = False
    run_local: bool = False
    pgen: str = ""
    pargs: tuple[str, ...] = ()
    reuse: str = ""
    use_cache: bool = True
    request_id: str = ""


class SubmitReply(BusMessage, tag="submit_reply"):
    """API answer to a submit: the new study's id and directory, or the error."""

    ok: bool
    study_id: str = ""
    study_dir: str = ""
    error: str = ""
    warnings: tuple[str, ...] = ()


class StatusRequest(BusMessage, tag="status_request"):
    """API: one study's steps (``study_id``), or a list of studies filtered by state
    and name glob."""

    study_id: str = ""
    state: str = ""
    name: str = ""


class StepSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One step in a status reply."""

    step: str
    state: str
    job_id: str = ""
    attempt: int = 0
    restarts: int = 0
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    reason: str = ""


class StudySummary(msgspec.Struct, frozen=True, kw_only=True):
    """One study in a status or list reply."""

    study_id: str
    name: str
    state: str
    study_dir: str
    created: float
    ended: float | None = None
    counts: dict[str, int] = {}
    error: str = ""  # why the engine could not host it


class StatusReply(BusMessage, tag="status_reply"):
    """API answer to a status or list request."""

    ok: bool
    studies: tuple[StudySummary, ...] = ()
    steps: tuple[StepSummary, ...] = ()
    error: str = ""


class RestartRequest(BusMessage, tag="restart_request"):
    """API: run the failed, cancelled and timed-out steps of a study again (and their
    descendants), keeping its FINISHED steps."""

    study_id: str


class JobReported(BusMessage, tag="job_reported"):
    """A scheduler job's trailer reports its exit status (``engine.notify``)."""

    exit_file: str
    exit_code: int


class EventsRequest(BusMessage, tag="events_request"):
    """API: replay a study's stored events, oldest first."""

    study_id: str


class EventsReply(BusMessage, tag="events_reply"):
    """API answer: the study's events, each one JSON message as stored in the stream."""

    ok: bool
    events: tuple[msgspec.Raw, ...] = ()
    error: str = ""


AnyBusMessage = (
    StepStateChanged | SamplesChanged | StudyStarted | StudyEnded | CancelSteps | SetThrottle
    | ControlReply
    | SubmitRequest | SubmitReply | StatusRequest | StatusReply | RestartRequest
    | EventsRequest | EventsReply | JobReported
)

ENCODER = msgspec.json.Encoder()
BUS_DECODER = msgspec.json.Decoder(AnyBusMessage)


# ----------------------------------------------------------------- machine events


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
    """Supervisor input: ``step`` wants a slot in each of ``scopes``."""

    step: str
    scopes: tuple[str, ...] = ("global",)


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
    """Ask the supervisor for a slot in each of ``scopes``."""

    step: str
    scopes: tuple[str, ...] = ("global",)


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
