"""Keys a spec may hold that Troupe reads but does not act on: each is a warning that
names it and says it is ignored, never a silent no-op (and an unknown key where Merlin
itself would refuse one is an error).

* Top-level blocks other than Maestro's, Merlin's (``merlin``, and ``user``, which holds
  YAML anchors) and Troupe's own (``troupe``): ignored, as Maestro ignores them.
* ``merlin.resources`` (``workers``, ``task_server``, ``overlap``): Troupe runs every
  step on the study's own adapter; Merlin's Celery workers are not started.
* ``run.task_queue``: unless ``troupe.executor: workers`` sends steps to queues.
* ``batch`` keys no adapter reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["ignored_keys"]

_TOP = ("description", "env", "batch", "study", "global.parameters", "merlin", "user", "troupe")
_MERLIN = ("resources", "samples")
_RESOURCES = ("workers", "task_server", "overlap")
# What the adapters read, what Maestro's own adapters take, and what Merlin adds.
_BATCH = ("type", "shell", "host", "bank", "queue", "reservation", "nodes", "procs", "gpus",
          "qos", "flux_uri", "args", "launcher_args", "allocation_args", "version",
          "dry_run", "launcher", "walltime", "worker_launch")


def ignored_keys(top: dict[str, Any], fail: Callable[[str, str], NoReturn]) -> list[str]:
    """The warnings for the keys of a (structurally valid) spec that Troupe ignores.

    Raises (through ``fail``):
        SpecError: a key in ``merlin:`` or ``merlin.resources`` that Merlin does not have.
    """
    out = [f"top-level key '{key}' is not used by Troupe and is ignored"
           for key in top if key not in _TOP]
    merlin = top.get("merlin") or {}
    for key in merlin:
        if key not in _MERLIN:
            fail(f"merlin.{key}", "unknown key (Merlin's are resources and samples)")
    resources = merlin.get("resources") or {}
    if not isinstance(resources, dict):
        fail("merlin.resources", "must be a mapping")
    for key in resources:
        if key not in _RESOURCES:
            fail(f"merlin.resources.{key}", "unknown key (Merlin's are workers, task_server "
                 "and overlap)")
    if resources:
        out.append(f"merlin.resources ({', '.join(resources)}) is ignored here: Troupe starts "
                   "no Celery workers ('enginectl run-workers SPEC' starts the workers it names)")
    queued = [s["name"] for s in top.get("study") or [] if "task_queue" in s.get("run", {})]
    if queued and (top.get("troupe") or {}).get("executor") != "workers":
        names = ", ".join(queued[:5]) + (f" and {len(queued) - 5} more" if len(queued) > 5 else "")
        out.append(f"run.task_queue is ignored (steps {names}): its steps run here unless "
                   "--executor workers (or troupe.executor: workers)")
    batch = top.get("batch") or {}
    for key in batch:
        if key not in _BATCH:
            out.append(f"batch.{key} is not used by any of Troupe's adapters and is ignored")
    return out
