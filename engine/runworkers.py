"""``enginectl run-workers SPEC``: the workers a Merlin spec asks for, started here.

Merlin's ``merlin.resources.workers`` names each worker with the steps it serves and its
Celery arguments::

    merlin:
      resources:
        workers:
          simworkers: {args: -l INFO --concurrency 4, steps: [sim, post]}
          learner: {args: --concurrency 1, steps: [learn]}

Each becomes one ``enginectl worker`` serving the queues of its steps (a step's
``task_queue``, else ``default``; ``steps: [all]`` or no ``steps``: every step), with the
``--concurrency`` of its args. Without a ``workers`` block, one worker serves every
queue (Merlin's default worker).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
from pathlib import Path
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError, printable


__all__ = ["WorkerPlan", "plan_workers"]

_DEFAULT_QUEUE = "default"  # adapters.workers.DEFAULT_QUEUE
_CONCURRENCY = re.compile(r"(?:--concurrency[ =]|-c ?)(\d{1,6})\b")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class WorkerPlan:
    """One worker to start: its name, queues and concurrency (and, as a Slurm job, its
    nodes and the spec's ``batch`` block)."""

    __slots__ = ("batch", "concurrency", "name", "nodes", "queues")

    def __init__(self, name: str, queues: list[str], concurrency: int | None, *,
                 nodes: int = 1, batch: dict[str, Any] | None = None) -> None:
        self.name, self.queues, self.concurrency = name, queues, concurrency
        self.nodes, self.batch = nodes, batch or {}

    def sbatch_script(self, argv: list[str], log: str) -> str:
        """A Slurm job that runs this worker inside its allocation (the pilot job)."""
        lines = ["#!/bin/bash", f"#SBATCH --job-name=troupe-worker-{self.name}",
                 f"#SBATCH --nodes={self.nodes}", f"#SBATCH --output={log}"]
        if self.batch.get("queue"):
            lines.append(f"#SBATCH --partition={self.batch['queue']}")
        if self.batch.get("bank"):
            lines.append(f"#SBATCH --account={self.batch['bank']}")
        return "\n".join([*lines, "", f"exec {shlex.join(argv)}", ""])

    def argv(self, enginectl: list[str], connect: list[str]) -> list[str]:
        extra = ["--concurrency", str(self.concurrency)] if self.concurrency else []
        return [*enginectl, "worker", "--name", self.name, "--queues", ",".join(self.queues),
                *extra, *connect]

    def shell(self, enginectl: list[str], connect: list[str]) -> str:
        return shlex.join(self.argv(enginectl, connect))


def plan_workers(spec: str) -> list[WorkerPlan]:
    """The workers ``spec`` asks for (see the module docstring).

    Raises:
        SpecError: the spec is not valid.
        ConfigError: a worker names a step the spec does not have.
    """
    from engine.spec import load_study
    from engine.spec.loader import parse_spec

    text = Path(spec).read_text()
    top: Any = parse_spec(spec, text)
    graph = load_study(spec, text=text, out_dir=os.devnull, now=dt.datetime.now(),
                       cwd=os.getcwd())
    sub = _substitution(spec, text)
    queues_of: dict[str, set[str]] = {}
    for inst in graph.steps:
        queues_of.setdefault(inst.step, set()).add(inst.task_queue or _DEFAULT_QUEUE)
    every = sorted({q for qs in queues_of.values() for q in qs})
    workers = (((top.get("merlin") or {}).get("resources") or {}).get("workers") or {}
               if isinstance(top, dict) else {})
    batch = dict(graph.batch)
    if not workers:
        return [WorkerPlan("default_worker", every, None, batch=batch)]
    plans = []
    for raw, cfg in workers.items():
        name = sub(str(raw))
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{spec}: merlin.resources.workers.{printable(name)}: a worker "
                              "name is 1 to 64 letters, digits, '.', '_' or '-', not starting "
                              "with '.' or '-'")
        cfg = cfg if isinstance(cfg, dict) else {}
        steps = [sub(str(s)) for s in cfg.get("steps") or ["all"]]
        if "all" in steps:
            queues = every
        else:
            unknown = [s for s in steps if s not in queues_of]
            if unknown:
                raise ConfigError(f"{spec}: merlin.resources.workers.{name}.steps: no step "
                                  f"named {', '.join(map(repr, unknown))}")
            queues = sorted({q for s in steps for q in queues_of[s]})
        found = _CONCURRENCY.search(sub(str(cfg.get("args") or "")))
        nodes = cfg.get("nodes")
        plans.append(WorkerPlan(str(name), queues, int(found.group(1)) if found else None,
                                nodes=nodes if isinstance(nodes, int) and nodes > 0 else 1,
                                batch=batch))
    return plans


def _substitution(spec: str, text: str) -> Callable[[str], str]:
    """``$(NAME)`` of the spec's variables and labels replaced (Merlin resolves them in
    ``merlin.resources.workers`` too: ``$(WORKER_NAME): {args: ...}``)."""
    from engine.spec.loader import load_spec
    from engine.spec.samples import resolve_merlin_variables

    parsed = load_spec(spec, text=text)
    if parsed.merlin:
        parsed = resolve_merlin_variables(parsed)
    known = {**parsed.env.variables, **parsed.env.labels}

    def sub(value: str) -> str:
        for name, resolved in known.items():
            value = value.replace(f"$({name})", str(resolved))
        return value

    return sub
