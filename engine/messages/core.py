"""States, outcomes and ids shared by every message (``engine.messages``)."""

from __future__ import annotations

import enum
import itertools
import os
from typing import Literal

__all__ = ["ACTIVE_STATES", "FAILURE_STATES", "FailureKind", "JobOutcome", "SCHEMA_VERSION",
           "StepState", "StudyState", "TERMINAL_STATES", "new_event_id"]

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
