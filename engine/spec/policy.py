"""What a spec says about running a step again: retry policies, walltimes, Merlin's codes.

These are the spec's values, validated by the loader and turned into each step's policy by
``engine.settings``: a ``RetryPolicy`` (Temporal-shaped: attempts, exponential delay, cap,
jitter), ``parse_walltime`` for Slurm-style ``walltime`` strings, and ``MERLIN_CODES``,
the ``$(MERLIN_...)`` exit-code tokens a Merlin spec may use. Judging a job's end with them
is the supervisor's (``engine.machines.policy``).
"""

from __future__ import annotations

from msgspec import Struct

__all__ = ["MERLIN_CODES", "RetryPolicy", "parse_walltime"]

MERLIN_CODES = {
    "MERLIN_SUCCESS": 0,
    "MERLIN_RESTART": 100,
    "MERLIN_SOFT_FAIL": 101,
    "MERLIN_HARD_FAIL": 102,
    "MERLIN_RETRY": 104,
    "MERLIN_STOP_WORKERS": 105,
    "MERLIN_RAISE_ERROR": 106,  # a failure like any other code (Merlin raises)
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


def parse_walltime(value: str | int | float | None) -> float | None:
    """Seconds in a walltime given as Slurm's ``--time`` takes it.

    Accepts ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; a bare
    number is minutes, as in Slurm.

    Args:
        value: The walltime as the spec gives it.

    Returns:
        The seconds, or None for None, "", 0 or "0" (no limit).

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
        day_text, _, text = text.partition("-")
        days = int(day_text)
        parts = [int(part) for part in text.split(":")]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts[:3]
    else:
        parts = [int(part) for part in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        elif len(parts) == 3:
            hours, minutes, seconds = parts
        else:
            raise ValueError(f"not a walltime: {value!r}")
    total = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    if any(number < 0 for number in (days, hours, minutes, seconds)):
        raise ValueError(f"not a walltime: {value!r}")
    return total or None
