"""The supervisor's policies: whether and when a step runs again after a job ends (pure).

``judge(record, result)`` turns the end of a job into a verdict: finished, a final failure
(with its kind, and whether it is soft or stops the study), or another run (a retry after
a backoff delay, a restart after a timeout, a resubmission after a hardware failure).
``backoff_delay`` is the retry schedule: exponential with a cap and a deterministic jitter
(derived from the step name and the retry number, so it is reproducible and needs no
random source). Nothing here reads the clock or does I/O.

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
from typing import Literal

from msgspec import Struct

__all__ = [
    "MERLIN_CODES",
    "RetryPolicy",
    "StepPolicy",
    "Verdict",
    "backoff_delay",
    "judge",
    "parse_walltime",
]

MERLIN_CODES = {
    "MERLIN_SUCCESS": 0,
    "MERLIN_RESTART": 100,
    "MERLIN_SOFT_FAIL": 101,
    "MERLIN_HARD_FAIL": 102,
    "MERLIN_RETRY": 104,
    "MERLIN_STOP_WORKERS": 105,
}
"""Merlin's exit-code tokens and their values (``$(MERLIN_RETRY)`` → ``104``)."""


class RetryPolicy(Struct, frozen=True, kw_only=True):
    """Retries on a failed exit: ``max_attempts`` runs in all (1 = no retry), waiting
    ``min(cap, initial_delay * factor**(n-1))`` seconds before retry n, varied by up to
    ``±jitter`` of itself."""

    max_attempts: int = 1
    initial_delay: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.1


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


VerdictKind = Literal["finished", "failed", "cancelled", "timedout", "hwfailure", "again"]


class Verdict(Struct, frozen=True, kw_only=True):
    """What to do after a job ended.

    Attributes:
        kind: The step's end state (``again`` = run another attempt).
        state_seen: The state to report for the attempt that just ended (e.g. TIMEDOUT
            before a restart, FAILED before a retry).
        failure: For failures, the kind on the event (exit_code, timeout, lost, ...).
        delay: Seconds to wait before the next attempt.
        use_restart: The next attempt runs the ``restart`` script.
        counter: Which counter the next attempt uses up: restarts, retries, merlin, hw.
        soft: A Merlin soft fail: the descendants still run.
        stop_study: A Merlin hard fail or stop-workers: stop the whole study.
        reason: Human-readable detail for the event.
    """

    kind: VerdictKind
    state_seen: str = ""
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
    """
    base = min(policy.cap, policy.initial_delay * policy.factor ** max(retry - 1, 0))
    if policy.jitter <= 0 or base <= 0:
        return base
    u = zlib.crc32(f"{key}#{retry}".encode()) / 0xFFFFFFFF  # in [0, 1]
    return max(0.0, base * (1.0 + policy.jitter * (2.0 * u - 1.0)))


def parse_walltime(value: str | int | float | None) -> float | None:
    """Seconds in a walltime given as Slurm's ``--time`` takes it.

    Accepts ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; a bare
    number is minutes, as in Slurm. Returns None for None, "", 0 or "0" (no limit).

    Raises:
        ValueError: the text is not a walltime.
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) * 60.0 or None
    text = str(value).strip()
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, s = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, s = parts
        else:
            raise ValueError(f"not a walltime: {value!r}")
    total = float(((days * 24 + h) * 60 + m) * 60 + s)
    if any(x < 0 for x in (days, h, m, s)):
        raise ValueError(f"not a walltime: {value!r}")
    return total or None


def _may_restart(policy: StepPolicy, restarts: int) -> bool:
    return policy.restart_limit == 0 or restarts < policy.restart_limit


def judge(
    policy: StepPolicy,
    *,
    step: str,
    outcome: str,
    exit_code: int | None,
    cancelling: bool,
    timing_out: bool,
    restarts: int,
    retries: int,
    merlin_retries: int,
    hw_failures: int,
) -> Verdict:
    """Decide what follows the end of a job (see the module docstring for the rules).

    Args:
        policy: The step's policy.
        step: The step's name (seeds the jitter).
        outcome: A ``JobOutcome`` value, or "" to judge by ``exit_code`` alone.
        exit_code: The job's exit code, if known.
        cancelling: The step was being cancelled.
        timing_out: The engine stopped the job because its walltime passed.
        restarts, retries, merlin_retries, hw_failures: What has been used up so far.

    Returns:
        The verdict.
    """
    if not outcome:
        outcome = "COMPLETED" if exit_code == 0 else "FAILED"
    if cancelling and not timing_out:
        return Verdict(kind="cancelled", reason="cancelled")
    if timing_out or outcome == "TIMEOUT":
        if _may_restart(policy, restarts):
            n = restarts + 1
            limit = "unlimited" if policy.restart_limit == 0 else str(policy.restart_limit)
            return Verdict(kind="again", state_seen="TIMEDOUT", failure="timeout",
                           use_restart=True, counter="restarts",
                           reason=f"walltime exceeded; restart {n}/{limit}")  # fmt: skip
        return Verdict(kind="timedout", failure="timeout", reason="walltime exceeded")
    if outcome == "NODE_FAIL":
        if hw_failures < policy.hw_limit:
            return Verdict(kind="again", state_seen="HWFAILURE", failure="lost", counter="hw",
                           reason=f"node failure; resubmission {hw_failures + 1}/{policy.hw_limit}")
        return Verdict(kind="hwfailure", failure="lost", reason="node failure")
    if outcome == "CANCELLED":
        return Verdict(kind="cancelled", reason="cancelled outside the engine")
    if outcome == "COMPLETED":
        return Verdict(kind="finished")
    code = f"exit code {exit_code}"
    if policy.merlin and exit_code in (100, 104):
        if merlin_retries < policy.max_retries:
            what = "restart" if exit_code == 100 else "retry"
            return Verdict(kind="again", state_seen="FAILED", failure="exit_code",
                           delay=policy.retry_delay, use_restart=exit_code == 100,
                           counter="merlin", reason=f"{code} (Merlin {what} "
                           f"{merlin_retries + 1}/{policy.max_retries})")  # fmt: skip
        return Verdict(kind="failed", failure="exit_code",
                       reason=f"{code}: Merlin max_retries ({policy.max_retries}) exhausted")
    if policy.merlin and exit_code == 101:
        return Verdict(kind="failed", failure="exit_code", soft=True, reason=f"{code} (soft fail)")
    if policy.merlin and exit_code in (102, 105):
        what = "hard fail" if exit_code == 102 else "stop workers"
        return Verdict(kind="failed", failure="exit_code", stop_study=True,
                       reason=f"{code} ({what}: the study stops)")
    kind = "lost" if outcome == "LOST" else "exit_code"
    detail = code if kind == "exit_code" else "the job was lost"
    if outcome == "OUT_OF_MEMORY":
        detail = "out of memory"
    if retries + 1 < policy.retry.max_attempts:
        n = retries + 1
        delay = backoff_delay(policy.retry, n, key=step)
        return Verdict(kind="again", state_seen="FAILED", failure=kind, delay=delay,
                       counter="retries", reason=f"{detail}; retry {n}/"
                       f"{policy.retry.max_attempts - 1} in {delay:.2f} s")  # fmt: skip
    return Verdict(kind="failed", failure=kind, reason=detail)
