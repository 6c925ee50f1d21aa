"""From a spec's ``troupe:`` block, its steps' keys and the command line to the supervisor's
inputs: the throttle limits per scope and one ``StepPolicy`` per step instance.

Precedence, highest first: the command line (``--throttle``, ``--rlimit``, ``--attempts``,
``--kill-grace``), the step's own keys (``restart_limit``, ``retry``, Merlin's
``max_retries``/``retry_delay``), the ``troupe:`` block, then Maestro's defaults (rlimit 1,
attempts 1). Throttle scopes: ``global`` (every step; ``--throttle`` or
``troupe.throttle``, default unlimited), ``adapter:<name>`` (``troupe.throttles``; local
steps default to the number of CPUs unless ``--throttle`` is given) and
``group:<name>`` (``troupe.groups``, joined with ``run.group``).
"""

from __future__ import annotations

import os

import msgspec

from adapters.base import DEFAULT_KILL_GRACE
from engine.errors import SpecError
from engine.machines.policy import StepPolicy
from engine.spec.extensions import TroupeSettings
from engine.spec.graph import StepInstance, StudyGraph
from engine.spec.policy import RetryPolicy, parse_walltime

__all__ = [
    "CliOverrides", "adapter_name", "kill_grace", "step_policies", "throttle_limits",
    "troupe_settings",
]


class CliOverrides(msgspec.Struct, frozen=True, kw_only=True):
    """Settings given on the command line (None = not given)."""

    throttle: int | None = None
    rlimit: int | None = None
    attempts: int | None = None
    kill_grace: float | None = None


def troupe_settings(graph: StudyGraph) -> TroupeSettings:
    """The study's validated ``troupe:`` block, typed."""
    return msgspec.convert(graph.troupe, TroupeSettings)


def kill_grace(graph: StudyGraph, cli: CliOverrides) -> float:
    """Seconds between SIGTERM and SIGKILL when a step is stopped: ``--kill-grace``, else
    ``troupe.kill_grace``, else the adapters' default."""
    if cli.kill_grace is not None:
        return cli.kill_grace
    grace = troupe_settings(graph).kill_grace
    return DEFAULT_KILL_GRACE if grace is None else grace


def adapter_name(graph: StudyGraph, inst: StepInstance, *, run_local: bool = False) -> str:
    """The backend a step runs on: its batch type (Merlin's per-step ``batch.type``, else
    the study's) if it asks for nodes/procs (Maestro's rule), else ``local``."""
    btype = inst.batch_type or graph.batch_type
    if run_local or btype == "local" or not inst.is_scheduled:
        return "local"
    return btype


def throttle_limits(graph: StudyGraph, cli: CliOverrides) -> dict[str, int]:
    """Limits per scope (0 = unlimited)."""
    cfg = troupe_settings(graph)
    limits: dict[str, int] = {f"adapter:{k}": v for k, v in cfg.throttles.items()}
    limits |= {f"group:{k}": v for k, v in cfg.groups.items()}
    if cli.throttle is not None:
        limits["global"] = cli.throttle
        limits.setdefault("adapter:local", 0)
    else:
        limits["global"] = cfg.throttle or 0
        limits.setdefault("adapter:local", os.cpu_count() or 1)
    return limits


def step_policies(
    graph: StudyGraph, cli: CliOverrides, *, run_local: bool = False
) -> dict[str, StepPolicy]:
    """One policy per step instance.

    Raises:
        SpecError: a walltime that cannot be parsed, or a step in an undeclared group.
    """
    cfg = troupe_settings(graph)
    base_retry = cfg.retry or RetryPolicy()
    attempts = cli.attempts or cfg.attempts or base_retry.max_attempts
    rlimit = cli.rlimit if cli.rlimit is not None else (cfg.rlimit if cfg.rlimit is not None else 1)
    hw_limit = cfg.hw_limit if cfg.hw_limit is not None else 3
    out: dict[str, StepPolicy] = {}
    shared: dict[StepPolicy, StepPolicy] = {}  # one object per distinct policy (memory)
    for inst in graph.steps:
        backend = adapter_name(graph, inst, run_local=run_local)
        scopes = ["global", f"adapter:{backend}"]
        if inst.group:
            if inst.group not in cfg.groups:
                raise SpecError(graph.spec_path, f"{inst.step}.run.group",
                                f"group '{inst.group}' is not declared in troupe.groups")
            scopes.append(f"group:{inst.group}")
        walltime = None
        if backend == "local":  # a scheduler enforces its own time limit
            try:
                walltime = parse_walltime(inst.resources.walltime)
            except ValueError as exc:
                raise SpecError(graph.spec_path, f"{inst.step}.run.walltime", str(exc)) from exc
        retry = base_retry
        if inst.retry:
            retry = msgspec.structs.replace(retry, **inst.retry)  # type: ignore[arg-type]
        if not (inst.retry and "max_attempts" in inst.retry):
            retry = msgspec.structs.replace(retry, max_attempts=attempts)
        policy = StepPolicy(
            scopes=tuple(scopes),
            walltime=walltime,
            restart_limit=inst.restart_limit if inst.restart_limit is not None else rlimit,
            retry=retry,
            merlin=graph.merlin,
            max_retries=inst.max_retries if inst.max_retries is not None else 30,
            retry_delay=float(inst.retry_delay) if inst.retry_delay is not None else 1.0,
            hw_limit=hw_limit,
        )
        out[inst.name] = shared.setdefault(policy, policy)
    return out
