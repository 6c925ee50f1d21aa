"""Every message the engine's actors exchange: bus events, machine events and commands.

One namespace, three files: ``core`` (states, outcomes, ids), ``bus`` (what travels on
NATS) and ``machine`` (the pure machines' events and commands).

All are frozen, tagged msgspec Structs. Bus messages (``BusMessage`` subclasses) travel
as JSON on NATS and are public (``docs/events.md``); machine events and commands are the
inputs and outputs of the pure ``decide`` functions in ``engine.machines``. Evolution
follows msgspec's rules: new fields get defaults, fields are never renamed or retyped,
tags never change, and every bus message carries ``schema_version``.
"""

from __future__ import annotations

from engine.messages.bus import *  # noqa: F403
from engine.messages.core import *  # noqa: F403
from engine.messages.machine import *  # noqa: F403

__all__ = [  # fmt: skip
    "ACTIVE_STATES", "AnyBusMessage", "AttemptLost", "BUS_DECODER", "BusMessage",
    "CacheHit", "CancelJob", "CancelRequested", "CancelStep", "CancelSteps", "CheckRace",
    "Command", "ControlReply", "DbReply", "DbRequest", "DependencyEnded", "ENCODER", "EndStudy", "Event",
    "EventsReply", "EventsRequest", "FAILURE_STATES", "FailureKind", "GrantSlot",
    "JobExited", "JobOutcome", "JobReported", "JobStarted", "KillAllJobs", "PublishState",
    "RaceChecked", "ReleaseSlot", "RequestSlot", "RestartRequest", "SCHEMA_VERSION", "SamplesChanged",
    "SetThrottle", "SlotGranted", "SlotReleased", "SlotRequested", "SlotWithdrawn",
    "StartTimer", "StatusReply", "StatusRequest", "StepEnded", "StepState",
    "StepStateChanged", "StepSummary", "StepWarning", "StopRequested", "StopStudy", "StopWorkers", "StudyCancelRequested",
    "StudyEnded", "StudyOpened", "StudyStarted", "StudyState", "StudySummary",
    "SubmissionsPaused", "SubmitFailed", "SubmitJob", "SubmitReply", "SubmitRequest",
    "TERMINAL_STATES", "Task", "TasksAlive", "ThrottleChanged", "TimerFired", "WithdrawSlotRequest", "WorkerAlive", "WorkerCancel",
    "WriteScript", "new_event_id",
]
