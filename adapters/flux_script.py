"""Flux job scripts, ``flux submit`` options and ``flux jobs`` output, by Maestro's Flux rules.

Pure functions for :mod:`adapters.flux`. Scripts are ``<safe name>.flux.sh``:
``#!<shell>``, Maestro's ``#flux:`` directives (for the reader: ``flux submit`` takes the
same settings as options; Maestro's ``#MAESTRO-INFO`` lines, which need a broker, are
left out), a blank line, and the command with ``$(LAUNCHER)`` expanded to ``flux run``
(maestrowf's flux adapter 0.49.0, the latest). A walltime that is a bare number means
minutes (``30`` → 1800 s); ``H:M:S`` is converted to seconds as Maestro does. Job ids are
64-bit integers printed in F58 (bitcoin base58, ``ƒ`` or ``f`` prefix). Results
COMPLETED/FAILED/CANCELED/TIMEOUT (one L in CANCELED) map to
:class:`~adapters.base.JobOutcome`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapters.base import JobOutcome, SubmitError
from adapters.jobwatch import JobState
from adapters.launcher import expand_flux_run, merge_flux_args, split_flux_exclusive
from adapters.slurm_script import check_header, is_scheduled, supports_trailer, wrap_with_trailer

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = [
    "FLUX_RESULTS",
    "f58_decode",
    "f58_encode",
    "flux_script",
    "parse_flux_jobs",
    "parse_jobid",
    "submit_options",
    "urgency",
    "walltime_seconds",
]

_F58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
#: Flux's results (RFC 21; note CANCELED with one L) and the outcome each maps to.
FLUX_RESULTS = {
    "COMPLETED": JobOutcome.COMPLETED,
    "FAILED": JobOutcome.FAILED,
    "CANCELED": JobOutcome.CANCELLED,
    "TIMEOUT": JobOutcome.TIMEOUT,
}
# Maestro's step priority → flux urgency (FluxInterface_0490._urgencies).
_URGENCY = {"HELD": 0, "MINIMAL": 1, "LOW": 9, "MEDIUM": 16, "HIGH": 24, "EXPEDITE": 31,
            "EXPEDITED": 31}  # fmt: skip


def f58_encode(n: int, *, ascii_prefix: bool = False) -> str:
    """Encode a job id in F58 (bitcoin base58 alphabet, ``ƒ`` or ``f`` prefix)."""
    digits = ""
    while True:
        n, r = divmod(n, 58)
        digits = _F58[r] + digits
        if n == 0:
            break
    return ("f" if ascii_prefix else "ƒ") + digits


def f58_decode(text: str) -> int:
    """Decode ``ƒ...``/``f...`` F58 text.

    Raises:
        ValueError: not F58.
    """
    if text[:1] not in ("ƒ", "f") or len(text) < 2:
        raise ValueError(f"not an F58 job id: {text!r}")
    n = 0
    for ch in text[1:]:
        idx = _F58.find(ch)
        if idx < 0:
            raise ValueError(f"not an F58 job id: {text!r}")
        n = n * 58 + idx
    return n


def parse_jobid(text: str) -> int:
    """Read a job id as ``flux submit`` prints it (F58) or in decimal.

    Raises:
        ValueError: neither form.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    return f58_decode(text)


def walltime_seconds(walltime: Any) -> float:
    """Maestro's Flux walltime: a bare number is minutes, ``H:M:S`` is summed, none is 0.

    Raises:
        ValueError: neither a number nor a colon-separated time.
    """
    if isinstance(walltime, bool):
        raise ValueError(f"walltime {walltime!r} is not a number or H:M:S")
    if isinstance(walltime, int | float):
        return int(float(walltime) * 60.0)
    if not walltime or walltime == "inf":
        return 0
    if isinstance(walltime, str) and walltime.isnumeric():
        return int(float(walltime) * 60.0)
    if isinstance(walltime, str) and ":" in walltime:
        parts = walltime.split(":")[::-1]
        return sum(float(v) * 60.0**i for i, v in enumerate(parts))
    raise ValueError(f"walltime {walltime!r} is not an integer or colon-separated string")


def urgency(priority: Any) -> int:
    """Maestro's priority (HELD..EXPEDITE or a float in 0..1) as a flux urgency (0..31)."""
    if priority is None or priority == "":
        return 16
    if isinstance(priority, str) and priority.upper() in _URGENCY:
        return _URGENCY[priority.upper()]
    return math.ceil(float(priority) * 31)


def _seconds_text(seconds: float) -> str:
    return f"{seconds}s"  # str() as Maestro prints it: 1800s, 600.0s


def flux_script(
    step: StepInstance, batch: Mapping[str, Any], *, shell: str = "/bin/bash",
    restart: bool = False, exit_file: str | None = None,
) -> str:  # fmt: skip
    """Build a step's Flux script: shebang, ``#flux:`` directives, command, trailer.

    Raises:
        LauncherError: a ``$(LAUNCHER)`` token asks for more than the step has.
        ValueError: the walltime cannot be read.
    """
    res = step.resources
    cmd = step.restart if restart else step.cmd
    lines = [f"#!{shell}"]
    if is_scheduled(step):
        launcher_args, launcher_x = split_flux_exclusive(batch.get("launcher_args") or {})
        cmd = expand_flux_run(
            cmd, res, step=step.name, exclusive=launcher_x,
            launcher_args=merge_flux_args(launcher_args, batch.get("args") or {}),
        )  # fmt: skip
        name = step.name.replace(" ", "_")
        d = "#flux: "
        if res.nodes:
            lines.append(f"{d}-N {res.nodes}")
        if res.procs and not res.exclusive:
            lines.append(f"{d}-n {res.procs}")
        lines.append(f"{d}-t {_seconds_text(walltime_seconds(res.walltime))}")
        if batch.get("queue"):
            lines.append(f"{d}-q {batch['queue']}")
        lines.append(f"{d}--bank={batch.get('bank') or ''}")
        lines += [f'{d}--job-name="{name}"', f"{d}--output={name}.{{{{id}}}}.out",
                  f"{d}--error={name}.{{{{id}}}}.err"]  # fmt: skip
        if res.exclusive:
            lines.append(f"{d}--exclusive")
    check_header(lines, step=step.name)
    if exit_file is not None and supports_trailer(shell):
        cmd = wrap_with_trailer(cmd, exit_file)
    return "\n".join(lines) + f"\n\n{cmd}\n"


def submit_options(step: StepInstance, batch: Mapping[str, Any], *, key: str) -> list[str]:
    """The ``flux submit`` options for a step (everything but the script path).

    Raises:
        SubmitError: a multi-node step asks for a nested instance, which ``flux submit``
            of a script cannot give; or a resource value is not a number.
    """
    res = step.resources
    try:
        nodes = int(res.nodes) if res.nodes not in (None, "") else None
        procs = int(res.procs) if res.procs else 1
        cpt = int(res.cores_per_task) if res.cores_per_task else 1
        gpus = int(res.gpus) if res.gpus else 0
        seconds = walltime_seconds(res.walltime)
    except (TypeError, ValueError) as exc:
        raise SubmitError(f"bad Flux resources: {exc}", step.name) from exc
    opts = [f"--job-name={key}", f"--cwd={step.workspace}",
            f"--output={step.name}.{{{{id}}}}.out", f"--error={step.name}.{{{{id}}}}.err"]
    exclusive = bool(res.exclusive) and nodes is not None
    if exclusive:
        procs, cpt = nodes, 1  # one slot per node (Maestro's submit())
    if res.nested is False:
        # Maestro's from_command(): the script is the task, one per proc.
        opts += ["-n", str(procs), "-c", str(cpt)] + (["-N", str(nodes)] if nodes else [])
        opts += ["-g", str(gpus)] if gpus and not exclusive else []
    else:
        if nodes is not None and nodes > 1:
            raise SubmitError(
                f"{nodes} nodes need a nested Flux instance (flux batch); this adapter "
                "submits scripts with flux submit, which runs one task on one node",
                step.name,
            )  # fmt: skip
        opts += ["-n", "1", "-c", str(procs * cpt)] + (["-N", "1"] if nodes else [])
        opts += ["-g", str(gpus)] if gpus and not exclusive else []
    if exclusive:
        opts.append("-x")
    if seconds > 0:
        opts.append(f"--time-limit={_seconds_text(seconds)}")
    if batch.get("queue"):
        opts.append(f"--queue={batch['queue']}")
    if batch.get("bank"):
        opts.append(f"--bank={batch['bank']}")
    opts.append(f"--urgency={urgency(res.priority)}")
    if res.waitable:
        opts.append("--flags=waitable")
    return opts


def parse_flux_jobs(stdout: str) -> dict[int, JobState]:
    """Read ``flux jobs --json`` output (``{"jobs": [...]}`` or one object) into states.

    Raises:
        ValueError: not the documented JSON shape.
    """
    data = json.loads(stdout) if stdout.strip() else {"jobs": []}
    jobs = data["jobs"] if isinstance(data, dict) and "jobs" in data else [data]
    out: dict[int, JobState] = {}
    for job in jobs:
        if not isinstance(job, dict) or "id" not in job or "state" not in job:
            raise ValueError(f"flux jobs --json entry without id/state: {job!r}")
        out[int(job["id"])] = _flux_state(job)
    return out


def _flux_state(job: Mapping[str, Any]) -> JobState:
    if job["state"] != "INACTIVE":
        return JobState(outcome=None, detail=str(job["state"]))
    result = str(job.get("result", ""))
    if result not in FLUX_RESULTS:
        raise ValueError(f"flux job {job['id']}: unknown result {result!r}")
    code = job.get("returncode")
    exc = job.get("exception") or {}
    detail = result + (f" returncode={code}" if code is not None else "")
    if exc.get("occurred"):
        detail += f" exception={exc.get('type', '')}"
        if exc.get("note"):
            detail += f" ({exc['note']})"
    outcome = FLUX_RESULTS[result]
    exit_code = 0 if outcome is JobOutcome.COMPLETED else (int(code) if code is not None else None)
    return JobState(outcome=outcome, exit_code=exit_code, detail=detail)
