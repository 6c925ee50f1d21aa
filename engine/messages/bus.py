"""The messages published on NATS (``engine.messages``): JSON, public (``docs/events.md``)."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.messages.core import SCHEMA_VERSION, FailureKind, StepState, StudyState


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
        samples_file, per_sample_status, strict: ``run``'s ``--samplesfile`` (an absolute
            path), ``--per-sample-status`` and ``--strict``.
        executor: ``--executor`` (replaces the spec's ``troupe.executor``), or "".
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
    samples_file: str = ""
    per_sample_status: bool = False
    strict: bool = False
    executor: str = ""


class SubmitReply(BusMessage, tag="submit_reply"):
    """API answer to a submit: the new study's id and directory, or the error."""

    ok: bool
    study_id: str = ""
    study_dir: str = ""
    error: str = ""
    warnings: tuple[str, ...] = ()


class StatusRequest(BusMessage, tag="status_request"):
    """API: one study's steps (``study_id``), or a list of studies filtered by state
    and name glob.

    A study's steps come a page at a time (a reply must fit in one NATS message): those
    from ``offset`` in status order, at most ``limit`` of them (-1: the engine's page,
    ``engine.status.STATUS_PAGE``; 0: none, the study's row and counts only). ``StatusReply.total_steps``
    says how many there are; ``engine.client.status_all`` asks for every page."""

    study_id: str = ""
    state: str = ""
    name: str = ""
    offset: int = 0
    limit: int = -1


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
    """API answer to a status or list request (``steps``: one page of a study's steps,
    from the request's ``offset``; ``total_steps``: how many the study has)."""

    ok: bool
    studies: tuple[StudySummary, ...] = ()
    steps: tuple[StepSummary, ...] = ()
    error: str = ""
    total_steps: int = 0


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


class DbRequest(BusMessage, tag="db_request"):
    """API: the entity database (Merlin's ``database`` commands): ``op`` is get, list or
    delete; ``kind`` is study, run, step or worker. ``ref`` names one entity (a study by
    id, prefix, name or directory; a run by id or workspace; a step as ``STUDY:STEP``; a
    worker by id); the filters narrow a list (or a delete with ``all``); ``force`` lets a
    delete remove a running study (cancelled first)."""

    op: str
    kind: str
    ref: str = ""
    study: str = ""
    state: str = ""
    worker: str = ""
    since: float | None = None
    all: bool = False
    force: bool = False


class DbReply(BusMessage, tag="db_reply"):
    """API answer to a ``DbRequest``: the entities as JSON objects, how many were
    deleted, or the error."""

    ok: bool
    entries: tuple[dict[str, Any], ...] = ()
    deleted: int = 0
    error: str = ""


class Task(BusMessage, tag="task"):
    """One attempt of a step for a worker (``enginectl worker``, ``adapters.workers``):
    run ``script`` in ``workspace`` under the claiming wrapper (``.troupe.<attempt>.pid``,
    exit status in ``exit_file``), outputs named from ``stem``, then publish a
    ``JobReported`` to ``report_subject``."""

    study_id: str
    step: str
    attempt: int
    key: str
    queue: str
    workspace: str
    script: str
    stem: str
    exit_file: str
    report_subject: str
    merlin: bool = False
    env: dict[str, str] = {}


class TasksAlive(BusMessage, tag="tasks_alive"):
    """A worker still runs these attempts (by key), said on their study's report subject
    every heartbeat: an attempt not heard of for long is lost (``adapters.workers``)."""

    worker: str
    keys: tuple[str, ...]


class WorkerAlive(BusMessage, tag="worker_alive"):
    """A worker's heartbeat on ``troupe.v1.workers.alive`` (``stopping``: its last)."""

    worker: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started: float
    running: tuple[str, ...] = ()
    stopping: bool = False


class StopWorkers(BusMessage, tag="stop_workers"):
    """API (``enginectl stop-workers``), then the engine's broadcast on
    ``troupe.v1.workers.stop``: the workers named, or serving one of ``queues`` (every
    worker if both are empty), stop as on SIGTERM."""

    queues: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


class WorkerCancel(BusMessage, tag="worker_cancel"):
    """The engine asks the workers to stop the attempt ``key`` (SIGTERM to its group,
    SIGKILL after ``grace`` seconds)."""

    key: str
    grace: float = 10.0


class StepWarning(BusMessage, tag="step_warning"):
    """Something about a step that is not a failure but may be a mistake: an unresolved
    ``$(TOKEN)`` in the command about to run (said once per spec step and token)."""

    study_id: str
    step: str
    message: str
    time: float


AnyBusMessage = (
    StepStateChanged | SamplesChanged | StepWarning | StudyStarted | StudyEnded | CancelSteps
    | SetThrottle | ControlReply
    | SubmitRequest | SubmitReply | StatusRequest | StatusReply | RestartRequest
    | EventsRequest | EventsReply | JobReported | DbRequest | DbReply | Task | WorkerCancel | TasksAlive | WorkerAlive | StopWorkers
)

ENCODER = msgspec.json.Encoder()
BUS_DECODER = msgspec.json.Decoder(AnyBusMessage)
