"""Slurm batch scripts by Maestro's rules, and the exit-status trailer Troupe appends.

Pure functions. :func:`slurm_script` reproduces maestrowf 1.2.1's
``SlurmScriptAdapter._write_script`` byte for byte (checked by a differential test
against ``maestro run --dry``): the ``#!<shell>`` line, then the ``#SBATCH`` header in
Maestro's fixed order (nodes, partition, account, time, job-name/output/error, comment,
reservation, gres, then ``--ntasks`` by Maestro's rule, ``--exclusive``, ``--qos``), a
blank line, and the command with ``$(LAUNCHER)`` expanded to ``srun``. A step with
neither ``nodes`` nor ``procs`` is not scheduled: its script is ``#!<shell>`` and the
command, unexpanded, as Maestro writes it before running the step locally.

:func:`wrap_with_trailer` is Troupe's addition for submitted scripts: the command runs in
a subshell and the outer shell then writes its exit status atomically into the workspace
(temp file + ``mv``), so completion is pushed to the engine instead of polled. A job
killed by a signal (``scancel``, time limit) never reaches the trailer; the adapter's
reconciler reports those from Slurm's own records.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapters.launcher import expand_srun
from engine.spec.naming import contained_path, make_safe_path

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = [
    "HeaderError",
    "check_header",
    "POSIX_SHELLS",
    "is_scheduled",
    "job_name",
    "script_name",
    "slurm_exit_file",
    "slurm_header",
    "slurm_script",
    "supports_trailer",
    "wrap_with_trailer",
]

#: Shells whose syntax the trailer uses (``( ... )``, ``$?``, ``printf``, ``mv``).
POSIX_SHELLS = frozenset({"sh", "bash", "dash", "ksh", "mksh", "zsh", "ash", "busybox"})


def is_scheduled(step: StepInstance) -> bool:
    """Maestro's rule: a step goes to the scheduler only if its own nodes or procs is truthy.

    The batch block's ``nodes``/``procs`` do not count (schedulerscriptadapter.py).
    """
    return bool(step.resources.nodes) or bool(step.resources.procs)


def script_name(step: StepInstance, *, restart: bool = False) -> str:
    """The script's file name: ``<safe name>.slurm.sh`` or ``<safe name>.restart.slurm.sh``.

    (Maestro sanitises only the main script's name; the restart name is sanitised here
    too, which differs only for names with characters outside ``[A-Za-z0-9-_.() ]``.)
    """
    return f"{make_safe_path(step.name)}{'.restart' if restart else ''}.slurm.sh"


class HeaderError(ValueError):
    """Raised when a value bound for a scheduler script's header (a step name, a batch
    setting) holds a control character: a newline there would end the directive and make
    the rest of the value a line of the script.

    Attributes:
        step: The step instance name.
        line: The header line as it would have been written.
    """

    def __init__(self, step: str, line: str) -> None:
        self.step = step
        self.line = line
        super().__init__(f"step {step!r}: a control character in the scheduler header line "
                         f"{line!r}")


def check_header(lines: list[str], *, step: str) -> None:
    """Refuse header lines that hold a control character (see ``HeaderError``).

    Raises:
        HeaderError: naming the first such line.
    """
    for line in lines:
        if any(ord(c) < 32 or ord(c) == 127 for c in line):
            raise HeaderError(step, line)


def job_name(step: StepInstance) -> str:
    """Maestro's ``--job-name``: the instance name with spaces replaced by ``_``."""
    return step.name.replace(" ", "_")


def slurm_header(step: StepInstance, batch: Mapping[str, Any], *, shell: str) -> str:
    """Build the ``#!`` line and ``#SBATCH`` header of a scheduled step.

    Args:
        step: The step instance (its resources are the ``run`` block's keys).
        batch: The study's ``batch`` block (``queue``, ``bank``, ``nodes``, ``procs``,
            ``reservation``, ``qos``; other keys are ignored, as ``host`` is).
        shell: The shebang's shell (``batch.shell``).

    Returns:
        The header, without a trailing newline.

    Raises:
        ValueError: the step is not scheduled (neither nodes nor procs).
        HeaderError: a value holds a control character.
    """
    if not is_scheduled(step):
        raise ValueError(
            f"step '{step.name}': no explicit resources; at least one of 'procs' or "
            "'nodes' must be set to a non-zero value"
        )
    res = step.resources
    # Maestro merges its batch parameters with the step's *truthy* run keys (step wins).
    procs_in_batch = bool(batch.get("procs"))
    merged: dict[str, Any] = {
        "nodes": batch.get("nodes") or "",
        "queue": batch.get("queue") or "",
        "bank": batch.get("bank") or "",
        "reservation": batch.get("reservation") or "",
        "qos": batch.get("qos"),
    }
    if procs_in_batch:
        merged["procs"] = batch["procs"]
    step_keys = {
        "nodes": res.nodes, "procs": res.procs, "walltime": res.walltime,
        "reservation": res.reservation, "gpus": res.gpus, "qos": res.qos,
        "exclusive": res.exclusive,
    }  # fmt: skip
    merged.update({k: v for k, v in step_keys.items() if v})
    name = job_name(step)
    lines = [f"#!{shell}"]
    if merged.get("nodes"):
        lines.append(f"#SBATCH --nodes={merged['nodes']}")
    if merged.get("queue"):
        lines.append(f"#SBATCH --partition={merged['queue']}")
    if merged.get("bank"):
        lines.append(f"#SBATCH --account={merged['bank']}")
    if merged.get("walltime"):
        lines.append(f"#SBATCH --time={merged['walltime']}")
    lines += [
        f'#SBATCH --job-name="{name}"',
        f'#SBATCH --output="{name}.out"',
        f'#SBATCH --error="{name}.err"',
    ]
    comment = step.description.replace("\n", " ")
    if comment:
        lines.append(f'#SBATCH --comment "{comment}"')
    if merged.get("reservation"):
        lines.append(f'#SBATCH --reservation="{merged["reservation"]}"')
    if merged.get("gpus"):
        lines.append(f"#SBATCH --gres=gpu:{merged['gpus']}")
    if procs_in_batch or not merged.get("nodes"):
        lines.append(f"#SBATCH --ntasks={merged.get('procs', '')}")
    if merged.get("exclusive"):
        lines.append("#SBATCH --exclusive")
    if merged.get("qos"):
        lines.append(f"#SBATCH --qos={merged['qos']}")
    check_header(lines, step=step.name)
    return "\n".join(lines)


def slurm_script(
    step: StepInstance, batch: Mapping[str, Any], *, shell: str = "/bin/bash",
    restart: bool = False, exit_file: str | None = None,
) -> str:  # fmt: skip
    """Build the text of a step's Slurm script (or restart script).

    Args:
        step: The step instance.
        batch: The study's ``batch`` block.
        shell: The shebang's shell.
        restart: Build the restart script (the step's ``restart`` command).
        exit_file: A shell word naming the exit-status file; when given (and the shell is
            POSIX), the command is wrapped by :func:`wrap_with_trailer`. ``None`` gives
            Maestro's script exactly.

    Returns:
        The script text, ending with a newline.

    Raises:
        LauncherError: a ``$(LAUNCHER)`` token asks for more than the step has.
    """
    cmd = step.restart if restart else step.cmd
    if is_scheduled(step):
        header = slurm_header(step, batch, shell=shell)
        cmd = expand_srun(cmd, step.resources, step=step.name)
    else:
        header = f"#!{shell}"
    if exit_file is not None and supports_trailer(shell):
        cmd = wrap_with_trailer(cmd, exit_file)
    return f"{header}\n\n{cmd}\n"


def supports_trailer(shell: str) -> bool:
    """Say whether scripts for ``shell`` can carry the exit-status trailer."""
    parts = shell.split()
    if not parts:
        return False
    exe = os.path.basename(parts[0])
    if exe == "env" and len(parts) > 1:  # "#!/usr/bin/env bash"
        exe = os.path.basename(parts[1])
    return exe in POSIX_SHELLS


def wrap_with_trailer(cmd: str, exit_file: str) -> str:
    """Run ``cmd`` in a subshell, then record its exit status in ``exit_file``.

    The subshell keeps ``exit N`` inside the command from skipping the trailer; the
    status is written to ``<file>.tmp`` and renamed, so a reader never sees a partial
    file. A shell killed by a signal writes nothing (Slurm's records then decide). If the
    job's environment has ``TROUPE_NOTIFY`` (set by the engine), the trailer also runs it
    with the exit file's path and the status, which publishes them on NATS
    (``engine.notify``); failing to reach the server changes nothing.

    Args:
        cmd: The command text.
        exit_file: A shell word for the file's path, already quoted as needed (it may
            expand a variable, e.g. ``'/ws/step.'"${SLURM_JOB_ID}"'.exit'``).

    Returns:
        The wrapped command text (without the trailing newline the script adds).
    """
    body = cmd if cmd.endswith("\n") else cmd + "\n"
    return (
        f"(\n{body})\n"
        "__troupe_rc=$?\n"
        "# troupe: record the exit status for the engine (temp file + mv: never partial)\n"
        f"__troupe_exit={exit_file}\n"
        "printf '%s\\n' \"$__troupe_rc\" > \"$__troupe_exit.tmp\" && "
        "mv -f \"$__troupe_exit.tmp\" \"$__troupe_exit\"\n"
        "# troupe: and tell the engine over NATS, if this node can reach it (best effort)\n"
        'if [ -n "${TROUPE_NOTIFY:-}" ]; then $TROUPE_NOTIFY "$__troupe_exit" "$__troupe_rc" '
        ">/dev/null 2>&1 || true; fi\n"
        'exit "$__troupe_rc"'
    )


def slurm_exit_file(workspace: str, step: StepInstance) -> str:
    """The shell word for a Slurm job's exit file: ``<ws>/<safe name>.<jobid>.exit``."""
    prefix = contained_path(workspace, step.name)
    return shlex.quote(prefix + ".") + '"${SLURM_JOB_ID:-unknown}"' + shlex.quote(".exit")
