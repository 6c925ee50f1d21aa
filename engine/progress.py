"""The live view of a study on a terminal (``run``, ``watch``, ``submit --wait``).

A bar drawn with rich: the study's name, done/total steps, the steps per state, the
retries and restarts so far, the elapsed time and an estimate of the time left. While it
is shown, whatever is written to stderr (warnings, log lines) is printed above it, never
inside it. Off a terminal nothing is drawn: the commands print only their final line,
``final_line``, which gives the study's duration.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from engine.messages import StepState

__all__ = ["StudyProgress", "final_line"]

_DONE = frozenset(s.value for s in (
    StepState.FINISHED, StepState.FAILED, StepState.CANCELLED, StepState.TIMEDOUT,
    StepState.HWFAILURE, StepState.SKIPPED, StepState.CACHED, StepState.DRYRUN))


def final_line(name: str, state: str, seconds: float | None, study_dir: str) -> str:
    """``name: STATE in 12.3 s (study dir)`` (no duration when it is unknown)."""
    took = f" in {_duration(seconds)}" if seconds is not None else ""
    return f"{name}: {state}{took} ({study_dir})"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


class StudyProgress:
    """A live progress bar for one study; use as a context manager, call ``update``.

    Args:
        name: The study's name.
        total: How many steps it has.
        stream: The terminal (stderr).
    """

    def __init__(self, name: str, total: int, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total = total
        console = Console(file=stream or sys.stderr, stderr=True, highlight=False)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[counts]}"),
            console=console, redirect_stderr=True, redirect_stdout=False,
            refresh_per_second=4)
        self._task = self._progress.add_task(name, total=total or 1, counts="")

    def __enter__(self) -> StudyProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, counts: dict[str, int], *, retries: int = 0, restarts: int = 0) -> None:
        """Show the steps per state now (and the retries and restarts so far)."""
        done = sum(n for state, n in counts.items() if state in _DONE)
        text = ", ".join(f"{n} {state}" for state, n in counts.items())
        extra = [f"{retries} retried"] if retries else []
        extra += [f"{restarts} restarted"] if restarts else []
        if extra:
            text = f"{text}; {', '.join(extra)}"
        self._progress.update(self._task, completed=done, total=self.total or 1, counts=text)
