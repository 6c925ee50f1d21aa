"""Expansion of ``$(LAUNCHER)`` into ``srun`` (Slurm) or ``flux run`` (Flux), by Maestro's rules.

Pure text in, text out. The rules are maestrowf 1.2.1's
(``SchedulerScriptAdapter._substitute_parallel_command``, ``SlurmScriptAdapter`` and
``FluxInterface_0490.parallelize``), quirks included, because a spec written against
Maestro must produce the same job scripts here:

* A bare ``$(LAUNCHER)`` becomes the launcher with the step's own ``procs``/``nodes``
  (never the batch block's): ``srun -n P [-N N] [-c C]``, ``flux run [-N N] [-n P] [-c C]
  [-g G]``.
* ``$(LAUNCHER)[Np, Mn]`` (either order, ``p`` required) and the legacy
  ``$(LAUNCHER)[N,P]`` (nodes first) give a per-command allocation, checked against the
  step's maxima per command and in total.
* If any bracketed form is present, bare tokens in the same command are **left as they
  are** (Maestro replaces only the bracketed matches).
* The bracket pattern is Maestro's greedy ``\\[(.*)\\]`` on one line: a later ``]`` on the
  same line becomes part of the allocation text.

Requests beyond the step's resources raise :class:`LauncherError` (a ``ValueError``) that
names the step; where Maestro itself would crash on a comparison between a number and a
missing value, the same condition is reported as a ``LauncherError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.spec.graph import Resources

__all__ = [
    "LAUNCHER_TOKEN",
    "LauncherError",
    "expand_flux_run",
    "expand_srun",
    "flux_run_command",
    "has_launcher",
    "merge_flux_args",
    "split_flux_exclusive",
    "srun_command",
]

#: The token a command uses to ask for the scheduler's parallel launcher.
LAUNCHER_TOKEN = "$(LAUNCHER)"

# Maestro's patterns, verbatim in meaning (schedulerscriptadapter.py).
_BRACKETED = re.compile(re.escape(LAUNCHER_TOKEN) + r"\[(?P<alloc>.*)\]")
_LEGACY = re.compile(r"(?P<nodes>[0-9]+),\s*(?P<procs>[0-9]+)")
_TASKS = re.compile(r"(?P<procs>[0-9]+)p")
_NODES = re.compile(r"(?P<nodes>[0-9]+)n")

#: A launcher builder: (procs, nodes) as Maestro passes them (strings, ints or None).
Builder = Callable[[Any, Any], str]


class LauncherError(ValueError):
    """Raised when a ``$(LAUNCHER)`` token is malformed or asks for more than the step has.

    Attributes:
        step: The step instance name.
        token: The offending token text (``$(LAUNCHER)[3p]``), or "" for a total.
    """

    def __init__(self, step: str, token: str, detail: str) -> None:
        self.step = step
        self.token = token
        super().__init__(f"step '{step}': {detail}")


def has_launcher(cmd: str) -> bool:
    """Say whether a command contains a ``$(LAUNCHER)`` token in any form."""
    return LAUNCHER_TOKEN in cmd


def srun_command(procs: Any, nodes: Any = None, *, cores_per_task: Any = None) -> str:
    """Build Maestro's ``srun`` prefix: ``srun -n P [-N N] [-c C]``.

    Values are printed with ``str`` exactly as Maestro does: a step without procs passes
    ``""`` (``srun -n  -N 2``), and ``$(LAUNCHER)[p]`` passes None (``srun -n None``).
    """
    args = ["srun", "-n", str(procs)]
    if nodes:
        args += ["-N", str(nodes)]
    if cores_per_task:
        args += ["-c", str(cores_per_task)]
    return " ".join(args)


def flux_run_command(
    procs: Any, nodes: Any = None, *, cores_per_task: Any = None, gpus: Any = None,
    exclusive: bool = False, launcher_args: Mapping[str, Any] | None = None,
) -> str:  # fmt: skip
    """Build Maestro's ``flux run`` prefix (flux adapter 0.49.0, the latest).

    ``flux run [-N N] [-n P] [-c C] [-g G] [--exclusive] [--setopt=K=V ...]``; with
    ``exclusive`` the per-task ``-c`` and ``-g`` are dropped. ``launcher_args`` is the
    batch block's ``args`` (rendered as ``--setopt``) merged into its ``launcher_args``.
    """
    args = ["flux", "run"]
    if nodes is not None and nodes != "":
        args += ["-N", str(nodes)]
    if procs:
        args += ["-n", str(procs)]
    if cores_per_task is not None and cores_per_task != "" and not exclusive:
        args += ["-c", str(cores_per_task)]
    if gpus and not exclusive:
        args += ["-g", str(gpus)]
    if exclusive:
        args.append("--exclusive")
    args += list(_render_flux_args(launcher_args or {}))
    return " ".join(args)


def expand_srun(cmd: str, resources: Resources, *, step: str) -> str:
    """Expand every ``$(LAUNCHER)`` form in ``cmd`` to ``srun`` for a Slurm step.

    Args:
        cmd: The step's command (or restart command), otherwise fully substituted.
        resources: The step's own run keys (the batch block plays no part here).
        step: The step instance name, for error messages.

    Returns:
        The command with the launcher tokens expanded by Maestro's rules.

    Raises:
        LauncherError: a bracketed token is malformed, or asks for more nodes or procs
            than the step has (per command or in total).
    """
    cpt = resources.cores_per_task

    def build(procs: Any, nodes: Any) -> str:
        return srun_command(procs, nodes, cores_per_task=cpt)

    return _expand(cmd, resources, step=step, build=build)


def expand_flux_run(
    cmd: str, resources: Resources, *, step: str, exclusive: bool = False,
    launcher_args: Mapping[str, Any] | None = None,
) -> str:  # fmt: skip
    """Expand every ``$(LAUNCHER)`` form in ``cmd`` to ``flux run`` for a Flux step.

    Args:
        cmd: The step's command (or restart command).
        resources: The step's own run keys.
        step: The step instance name, for error messages.
        exclusive: The launcher half of Maestro's ``exclusive`` setting.
        launcher_args: Extra ``flux run`` options (see :func:`flux_run_command`).

    Returns:
        The command with the launcher tokens expanded.

    Raises:
        LauncherError: as for :func:`expand_srun`.
    """

    def build(procs: Any, nodes: Any) -> str:
        return flux_run_command(
            procs, nodes, cores_per_task=resources.cores_per_task, gpus=resources.gpus,
            exclusive=exclusive, launcher_args=launcher_args,
        )  # fmt: skip

    return _expand(cmd, resources, step=step, build=build)


def _expand(cmd: str, resources: Resources, *, step: str, build: Builder) -> str:
    matches = list(_BRACKETED.finditer(cmd))
    if not matches:
        # Bare tokens only (or none): the step's whole allocation on each.
        if LAUNCHER_TOKEN not in cmd:
            return cmd
        # Maestro's run keys default to "", which is what a missing value prints as.
        procs, nodes = _text(resources.procs), _text(resources.nodes)
        return cmd.replace(LAUNCHER_TOKEN, build(procs, nodes))
    max_nodes, max_procs = resources.nodes, resources.procs
    total_nodes = total_procs = 0
    out = cmd
    for match in matches:
        token = match.group()
        nodes, procs = _allocation(match.group("alloc"), step=step, token=token)
        if nodes:
            total_nodes += _check(step, token, _num(step, token, nodes), max_nodes, "nodes")
        if procs:
            total_procs += _check(step, token, _num(step, token, procs), max_procs, "procs")
        out = out.replace(token, build(procs, nodes))
    if total_procs > _as_int(step, max_procs, "procs"):
        raise LauncherError(
            step, "", f"total processors ({total_procs}) requested exceeds the maximum "
            f"requested ({max_procs})",
        )  # fmt: skip
    if max_nodes and total_nodes > _as_int(step, max_nodes, "nodes"):
        raise LauncherError(
            step, "", f"total nodes ({total_nodes}) requested exceeds the maximum "
            f"requested ({max_nodes})",
        )  # fmt: skip
    return out


def _allocation(alloc: str, *, step: str, token: str) -> tuple[str | None, str | None]:
    """Split a bracket's text into (nodes, procs) strings as Maestro reads them."""
    if _LEGACY.search(alloc):
        # Maestro splits on the commas itself, so " 2" keeps its space in the output.
        parts = alloc.split(",")
        return parts[0], parts[1]
    if alloc.count("p") > 1 or alloc.count("n") > 1:
        raise LauncherError(
            step, token, f"{token}: nodes and/or procs must only be specified once",
        )  # fmt: skip
    if alloc.count("p") < 1:
        raise LauncherError(step, token, f"{token}: processors/tasks (Np) must be specified")
    nodes = _NODES.search(alloc)
    procs = _TASKS.search(alloc)
    return (nodes.group("nodes") if nodes else None, procs.group("procs") if procs else None)


def _num(step: str, token: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LauncherError(step, token, f"{token}: {text.strip()!r} is not a count") from None


def _check(step: str, token: str, wanted: int, maximum: Any, what: str) -> int:
    if wanted > _as_int(step, maximum, what, token=token):
        raise LauncherError(
            step, token, f"{token} attempting to allocate {wanted} {what} for a parallel "
            f"call with a maximum allocation of {maximum}",
        )  # fmt: skip
    return wanted


def _as_int(step: str, value: Any, what: str, *, token: str = "") -> int:
    """The step's maximum as an int; a missing or non-numeric one is an error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    where = f"{token} asks for {what}, but" if token else "the launcher needs"
    raise LauncherError(
        step, token, f"{where} the step sets no numeric '{what}' (got {value!r})",
    )  # fmt: skip


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --- flux launcher options (FluxInterface_0490.render_additional_args) --------------

# Option groups Maestro knows, and the long option each renders as.
_FLUX_GROUPS = {
    "o": "setopt", "setopt": "setopt", "shell_options": "setopt",
    "S": "setattr", "setattr": "setattr", "attributes": "setattr", "conf": "conf",
}  # fmt: skip


_GROUP_NAMES = {"o": "shell_options", "setopt": "shell_options", "S": "attributes",
                "setattr": "attributes"}  # fmt: skip


def split_flux_exclusive(launcher_args: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Pop Maestro's ``x``/``exclusive`` flags from ``launcher_args``.

    Returns:
        The remaining arguments and whether an exclusive flag was present.
    """
    rest = {k: v for k, v in launcher_args.items() if k not in ("x", "exclusive")}
    return rest, len(rest) != len(launcher_args)


def merge_flux_args(launcher_args: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """Combine the batch block's ``launcher_args`` and deprecated ``args`` as Maestro does.

    ``launcher_args`` groups are normalised (``o`` → ``shell_options`` ...); the ``args``
    dict then goes in a trailing ``o`` group, rendered after them as ``--setopt``.
    """
    merged: dict[str, Any] = {}
    if launcher_args:
        merged = {"attributes": {}, "shell_options": {}, "conf": {}}
        for key, value in launcher_args.items():
            group = _GROUP_NAMES.get(key, key)
            if isinstance(value, Mapping) and isinstance(merged.get(group), dict):
                merged[group] = {**merged[group], **value}
            else:
                merged[group] = value
    merged["o"] = dict(args)
    return merged


def _render_flux_args(groups: Mapping[str, Any]) -> Iterator[str]:
    for key, value in groups.items():
        cli = _FLUX_GROUPS.get(key, key)
        prefix, sep = ("-", " ") if len(cli) == 1 else ("--", "=")
        for path, leaf in _dotpaths(value, ""):
            if isinstance(leaf, bool):
                leaf = str(leaf).lower()  # flux wants JSON's true/false
            text = f"{prefix}{cli}{sep}{path}"
            yield f"{text}={leaf}" if leaf else text


def _dotpaths(node: Any, base: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _dotpaths(value, f"{base}.{key}" if base else str(key))
    else:
        yield base, node
