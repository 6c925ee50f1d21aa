"""What to tell the user when a study ends FAILURE: which steps failed, how, and where
to look (``run``, ``submit --wait`` and ``watch`` print it; ``engine.client``).

``failure_report`` takes the failed steps as the engine knows them (state, exit code or
reason, attempts, job id), finds each one's workspace in the study's ``status.csv`` and
its error file in the workspace (Maestro's ``<name>.<job id>.err``, Merlin's
``<name>.err``), lists the steps that failed by themselves first (at most ``limit``,
then a count), counts those that failed only because a dependency did, and ends with
the last lines of the first step's error file. For a sampled (Merlin) step it names
the failed samples and the error file of the first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from engine.errors import EngineError, printable
from engine.status import read_status

__all__ = ["FailedStep", "failure_report"]

_FAILURES = frozenset({"FAILED", "TIMEDOUT", "HWFAILURE"})
_TAIL_BYTES = 64 * 1024


class FailedStep(msgspec.Struct, frozen=True, kw_only=True):
    """A step in a failure state, as the engine knows it."""

    step: str
    state: str
    exit_code: int | None = None
    reason: str = ""
    attempts: int = 0
    job_id: str = ""


def failure_report(study_dir: str, steps: Iterable[FailedStep], *, limit: int = 10,
                   tail: int = 5) -> list[str]:
    """The lines to print for a failed study (empty if no step is in a failure state)."""
    failed = [s for s in steps if s.state in _FAILURES]
    if not failed:
        return []
    by_dependency = [s for s in failed if s.reason.startswith("dependency ")]
    own = [s for s in failed if not s.reason.startswith("dependency ")]
    workspaces = _workspaces(study_dir)
    lines = [f"{len(own)} step(s) failed:" if own else "failed steps:"]
    first_err = ""
    for s in own[:limit]:
        ws = workspaces.get(s.step, "")
        err, samples = _error_file(study_dir, ws, s)
        first_err = first_err or err
        how = (f"exit code {s.exit_code}" if s.exit_code is not None else "") or s.reason
        if s.reason and s.exit_code is not None and s.reason != how:
            how = f"{how}: {s.reason}"
        attempts = f", {s.attempts} attempt{'s' if s.attempts != 1 else ''}" if s.attempts else ""
        lines.append(f"  {s.step}: {s.state} ({printable(how or 'no detail')}{attempts})"
                     f"{samples}")
        if err:
            lines.append(f"    see {err}")
    if len(own) > limit:
        lines.append(f"  ... and {len(own) - limit} more (enginectl status)")
    if by_dependency:
        names = ", ".join(s.step for s in by_dependency[:3])
        more = f" and {len(by_dependency) - 3} more" if len(by_dependency) > 3 else ""
        lines.append(f"  {len(by_dependency)} step(s) did not run because a dependency "
                     f"failed: {names}{more}")
    if first_err:
        last = _tail(first_err, tail)
        if last:
            lines.append(f"last lines of {first_err}:")
            lines += [f"  | {printable(line)}" for line in last]
    return lines


def _workspaces(study_dir: str) -> dict[str, str]:
    """Each step's workspace (absolute), from the study's status.csv."""
    try:
        rows = read_status(Path(study_dir) / "status.csv")
    except (OSError, UnicodeDecodeError):
        return {}
    return {r["Step Name"]: os.path.join(study_dir, r["Workspace"]) for r in rows
            if r.get("Workspace")}


def _error_file(study_dir: str, ws: str, s: FailedStep) -> tuple[str, str]:
    """The step's error file ("" if none) and, for a sampled step, what to say of its
    failed samples."""
    if not ws or not os.path.isdir(ws):
        return "", ""
    note = ""
    if s.job_id.endswith(" samples") or s.job_id == "":
        try:
            from engine.samplestatus import query_samples

            bad = query_samples(study_dir, s.step, "FAILED")
        except EngineError:
            bad = []
        if bad:
            ids = " ".join(str(r["sample"]) for r in bad[:10])
            note = f"; {len(bad)} sample(s) failed: {ids}{' ...' if len(bad) > 10 else ''}"
            ws = os.path.join(ws, bad[0]["path"])
    stem = s.step.replace("/", "_").replace("\x00", "_")
    for name in (f"{stem}.{s.job_id}.err" if s.job_id else "", f"{stem}.err"):
        if name and os.path.isfile(os.path.join(ws, name)):
            return os.path.join(ws, name), note
    try:
        errs = sorted((e for e in os.scandir(ws) if e.name.endswith(".err") and e.is_file()),
                      key=lambda e: e.stat().st_mtime)
    except OSError:
        return "", note
    return (errs[-1].path if errs else ""), note


def _tail(path: str, n: int) -> list[str]:
    """The last ``n`` non-empty lines of a file (its last 64 KB at most)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-n:]
