"""The supervisor's policies: whether and when a step runs again after a job ends (pure).

``judge_exit(policy, ...)`` judges how a job ended and returns what follows, an ``AfterExit``:
finished, a final failure (with its kind, and whether it is soft or stops the study), or
another run (a retry after a backoff delay, a restart after a timeout, a resubmission after
a hardware failure).
``backoff_delay`` is the retry schedule: exponential with a cap and a deterministic jitter
(derived from the step name and the retry number, so it is reproducible and needs no
random source). The spec's values it applies (``RetryPolicy``, walltimes, Merlin's codes)
are defined in ``engine.spec.policy``. Nothing here reads the clock or does I/O.

Rules, in order:
  * a job stopped because the step was cancelled ends CANCELLED;
  * a walltime or scheduler timeout ends TIMEDOUT, and is restarted (its ``restart``
    command, else ``cmd``) while restarts < the restart limit (0 = unlimited; Maestro);
  * a hardware failure (``NODE_FAIL``) is resubmitted up to ``hw_limit`` times;
  * exit code 0 is FINISHED;
  * with Merlin's protocol on: 100 restart and 104 retry (after ``retry_delay``, up to
    ``max_retries``), 101 soft fail (descendants still run), 102 and 105 stop the study;
  * any other failure is retried with backoff while attempts remain (``retry``), then
    FAILED.
"""

from __future__ import annotations

import zlib
from typing import Literal, TypeAlias

from msgspec import Struct

from engine.messages import JobOutcome, StepState
from engine.spec.policy import RetryPolicy

__all__ = ["AfterExit", "AfterExitKind", "StepPolicy", "backoff_delay", "judge_exit"]


class StepPolicy(Struct, frozen=True, kw_only=True):
    """Everything the supervisor needs to decide about one step.

    Attributes:
        scopes: Throttle scopes the step takes a slot in (``global``, ``adapter:local``,
            ``group:<name>``).
        walltime: Seconds after which a local job is stopped as TIMEDOUT (None: none).
        restart_limit: Restarts after a timeout (0 = unlimited).
        retry: Retries after a failed exit.
        merlin: Whether Merlin's exit-code protocol applies.
        max_retries: Merlin's retry/restart bound for codes 100 and 104.
        retry_delay: Merlin's delay before a code-104 retry (and a 100 restart).
        hw_limit: Resubmissions after a hardware failure.
    """

    scopes: tuple[str, ...] = ("global",)
    walltime: float | None = None
    restart_limit: int = 1
    retry: RetryPolicy = RetryPolicy()
    merlin: bool = False
    max_retries: int = 30
    retry_delay: float = 1.0
    hw_limit: int = 3


AfterExitKind: TypeAlias = Literal[
    "finished", "failed", "cancelled", "timedout", "hwfailure", "again"
]
"""The step's end state after a job ended, or ``again`` (run another attempt)."""


class AfterExit(Struct, frozen=True, kw_only=True):
    """What follows the end of a job: ``judge_exit``'s answer.

    Attributes:
        kind: The step's end state (``again`` = run another attempt).
        state_seen: With ``again``, the state to report for the attempt that just ended
            (TIMEDOUT before a restart, HWFAILURE before a resubmission, FAILED before a
            retry); None otherwise.
        failure: For failures, the kind on the event (exit_code, timeout, lost, ...).
        delay: Seconds to wait before the next attempt.
        use_restart: The next attempt runs the ``restart`` script.
        counter: Which counter the next attempt uses up: restarts, retries, merlin, hw.
        soft: A Merlin soft fail: the descendants still run.
        stop_study: A Merlin hard fail or stop-workers: stop the whole study.
        reason: Human-readable detail for the event.
    """

    kind: AfterExitKind
    state_seen: StepState | None = None
    failure: str = ""
    delay: float = 0.0
    use_restart: bool = False
    counter: Literal["", "restarts", "retries", "merlin", "hw"] = ""
    soft: bool = False
    stop_study: bool = False
    reason: str = ""


def backoff_delay(policy: RetryPolicy, retry: int, *, key: str = "") -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    The jitter is a deterministic function of ``key`` and ``retry``, uniform in
    ``[-jitter, +jitter]`` of the capped delay.

    Args:
        policy: The retry policy.
        retry: The retry's number, from 1.
        key: Seeds the jitter (the step's name).

    Returns:
        The delay in seconds, >= 0.
    """
    try:
        grown = policy.initial_delay * policy.factor ** max(retry - 1, 0)
    except OverflowError:  # factor**n beyond a float (many retries): the cap applies
        grown = policy.cap
    base = min(policy.cap, grown)
    if policy.jitter <= 0 or base <= 0:
        return base
    spread = zlib.crc32(f"{key}#{retry}".encode()) / 0xFFFFFFFF  # in [0, 1]
    return max(0.0, base * (1.0 + policy.jitter * (2.0 * spread - 1.0)))


def _may_restart(policy: StepPolicy, restarts: int) -> bool:
    return policy.restart_limit == 0 or restarts < policy.restart_limit


def judge_exit(
    policy: StepPolicy,
    *,
    step: str,
    outcome: JobOutcome | None,
    exit_code: int | None,
    cancelling: bool,
    timing_out: bool,
    restarts: int,
    retries: int,
    merlin_retries: int,
    hw_failures: int,
) -> AfterExit:
    """Decide what follows the end of a job (see the module docstring for the rules).

    Args:
        policy: The step's policy.
        step: The step's name (seeds the jitter).
        outcome: How the job ended, or None to judge by ``exit_code`` alone.
        exit_code: The job's exit code, if known.
        cancelling: The step was being cancelled.
        timing_out: The engine stopped the job because its walltime passed.
        restarts, retries, merlin_retries, hw_failures: What has been used up so far.

    Returns:
        What follows.
    """
    if outcome is None:
        outcome = JobOutcome.COMPLETED if exit_code == 0 else JobOutcome.FAILED
    if cancelling and not timing_out:
        return AfterExit(kind="cancelled", reason="cancelled")
    if timing_out or outcome == JobOutcome.TIMEOUT:
        if _may_restart(policy, restarts):
            limit = "unlimited" if policy.restart_limit == 0 else str(policy.restart_limit)
            return AfterExit(kind="again", state_seen=StepState.TIMEDOUT, failure="timeout",
                             use_restart=True, counter="restarts",
                             reason=f"walltime exceeded; restart {restarts + 1}/{limit}")
        return AfterExit(kind="timedout", failure="timeout", reason="walltime exceeded")
    if outcome == JobOutcome.NODE_FAIL:
        if hw_failures < policy.hw_limit:
            return AfterExit(kind="again", state_seen=StepState.HWFAILURE, failure="lost",
                             counter="hw", reason=f"node failure; resubmission "
                             f"{hw_failures + 1}/{policy.hw_limit}")  # fmt: skip
        return AfterExit(kind="hwfailure", failure="lost", reason="node failure")
    if outcome == JobOutcome.CANCELLED:
        return AfterExit(kind="cancelled", reason="cancelled outside the engine")
    if outcome == JobOutcome.COMPLETED:
        return AfterExit(kind="finished")
    code = f"exit code {exit_code}"
    if policy.merlin and exit_code in (100, 104):
        if merlin_retries < policy.max_retries:
            what = "restart" if exit_code == 100 else "retry"
            return AfterExit(kind="again", state_seen=StepState.FAILED, failure="exit_code",
                             delay=policy.retry_delay, use_restart=exit_code == 100,
                             counter="merlin", reason=f"{code} (Merlin {what} "
                             f"{merlin_retries + 1}/{policy.max_retries})")  # fmt: skip
        return AfterExit(kind="failed", failure="exit_code",
                         reason=f"{code}: Merlin max_retries ({policy.max_retries}) exhausted")
    if policy.merlin and exit_code == 101:
        return AfterExit(kind="failed", failure="exit_code", soft=True,
                         reason=f"{code} (soft fail)")
    if policy.merlin and exit_code in (102, 105):
        what = "hard fail" if exit_code == 102 else "stop workers"
        return AfterExit(kind="failed", failure="exit_code", stop_study=True,
                         reason=f"{code} ({what}: the study stops)")
    kind = "lost" if outcome == JobOutcome.LOST else "exit_code"
    detail = code if kind == "exit_code" else "the job was lost"
    if outcome == JobOutcome.OUT_OF_MEMORY:
        detail = "out of memory"
    if retries + 1 < policy.retry.max_attempts:
        retry = retries + 1
        delay = backoff_delay(policy.retry, retry, key=step)
        return AfterExit(kind="again", state_seen=StepState.FAILED, failure=kind, delay=delay,
                         counter="retries", reason=f"{detail}; retry {retry}/"
                         f"{policy.retry.max_attempts - 1} in {delay:.2f} s")  # fmt: skip
    return AfterExit(kind="failed", failure=kind, reason=detail)
