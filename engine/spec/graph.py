"""The expanded study: step instances, their edges and workspaces (pure data, no I/O).

``StudyGraph`` is what the spec layer hands to the runtime. Every command in it is fully
substituted except ``$(LAUNCHER)``, which only a scheduler adapter can expand. Instances are
kept in a topological order (spec order of steps, then combination order), so a parent
always comes before its children.
"""

from __future__ import annotations

import os
from collections import deque
from functools import cached_property
from typing import Any

import msgspec

from engine.spec.samples import SampleSpec

__all__ = ["GitDependency", "PathDependency", "Resources", "StepInstance", "StudyGraph"]


class Resources(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A step's scheduler resources, after token substitution (Maestro ``run`` keys)."""

    nodes: int | str | None = None
    procs: int | str | None = None
    gpus: int | str | None = None
    cores_per_task: int | str | None = None
    tasks_per_rs: int | str | None = None
    rs_per_node: int | str | None = None
    cpus_per_rs: int | str | None = None
    bind: str | None = None
    bind_gpus: str | None = None
    walltime: str | int | None = None
    reservation: str | None = None
    qos: str | None = None
    exclusive: bool | str | None = None
    nested: bool | None = None
    waitable: bool | None = None
    priority: str | float | None = None


class StepInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One runnable instance of a spec step (one parameter combination).

    Attributes:
        name: Instance name, Maestro's ``<step>_<combo>`` (raw characters kept).
        step: The spec step it comes from.
        description: The step description after substitution.
        workspace: Absolute workspace directory, always inside the study directory.
        cmd: The command, fully substituted except ``$(LAUNCHER)``.
        restart: The restart command, substituted the same way ("" if none).
        parents: Instance names this instance waits for.
        params: The used parameters as ``(key, value)`` pairs, sorted by key.
        resources: Scheduler resources from the ``run`` block.
        funnel_parents: Spec step names this step depends on as a funnel (``X_*``).
        group: Throttle group (Troupe's ``run.group``), "" for none.
        restart_limit: Per-step restart limit after timeouts (``run.restart_limit``).
        retry: Per-step retry policy fields (``run.retry``).
        when: The step's condition over its dependencies' states ("" = Maestro's rule).
        race: The race group it belongs to ("" for none).
        max_retries, retry_delay, shell, task_queue: Merlin's step keys.
        sampled: It runs once per sample of ``merlin.samples`` (Merlin's rule: its cmd or
            restart names a column label, ``$(MERLIN_SAMPLE_ID)`` or ``$(MERLIN_SAMPLE_PATH)``).
        batch_type: Merlin's per-step ``batch: {type}``: the adapter that runs it ("" = the
            study's ``batch.type``).
    """

    name: str
    step: str
    description: str
    workspace: str
    cmd: str
    restart: str = ""
    parents: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    resources: Resources = Resources()
    funnel_parents: tuple[str, ...] = ()
    group: str = ""
    restart_limit: int | None = None
    retry: dict[str, float] | None = None
    when: str = ""
    race: str = ""
    group_by: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    max_retries: int | None = None
    retry_delay: float | None = None
    shell: str = ""
    task_queue: str = ""
    sampled: bool = False
    batch_type: str = ""

    @property
    def is_scheduled(self) -> bool:
        """Maestro's rule: a step goes to a scheduler only if it asks for nodes or procs."""
        return bool(self.resources.nodes) or bool(self.resources.procs)


class GitDependency(msgspec.Struct, frozen=True, kw_only=True):
    """A git repository to clone into ``path/name`` before the study starts."""

    name: str
    path: str
    url: str
    tag: str = ""
    hash: str = ""
    branch: str = ""

    @property
    def target(self) -> str:
        """Where the clone lands (Maestro: ``<path>/<name>``)."""
        return f"{self.path.rstrip('/')}/{self.name}"


class PathDependency(msgspec.Struct, frozen=True, kw_only=True):
    """A path that must exist before the study starts; ``$(name)`` becomes it."""

    name: str
    path: str


class StudyGraph(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """An expanded study, ready to run.

    Attributes:
        name: ``description.name`` of the spec.
        description: ``description.description``.
        spec_path: Absolute path of the spec file.
        study_dir: Absolute study directory (timestamped, or ``-o DIR``).
        steps: Every instance, in topological order.
        batch: The ``batch`` block (``type`` defaults to ``local``).
        variables: The environment's plain variables after substitution (name -> value).
        git: Git dependencies to acquire before the study starts.
        paths: Path dependencies to check before the study starts.
        warnings: Non-fatal findings, e.g. unresolved ``$(TOKEN)`` in a command.
        troupe: The spec's top-level ``troupe:`` block (engine settings), validated.
        merlin: The spec has a ``merlin:`` block: Merlin's exit-code protocol applies.
        samples: ``merlin.samples`` with its file and generate command substituted.
    """

    name: str
    description: str
    spec_path: str
    study_dir: str
    steps: tuple[StepInstance, ...]
    batch: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "local"})
    variables: dict[str, str] = msgspec.field(default_factory=dict)
    git: tuple[GitDependency, ...] = ()
    paths: tuple[PathDependency, ...] = ()
    warnings: tuple[str, ...] = ()
    troupe: dict[str, Any] = msgspec.field(default_factory=dict)
    merlin: bool = False
    samples: SampleSpec | None = None

    @property
    def merlin_info(self) -> str:
        """Merlin's ``merlin_info/`` directory of this study."""
        return os.path.join(self.study_dir, "merlin_info")

    @property
    def batch_type(self) -> str:
        """``batch.type``, Maestro's default ``local`` when unset."""
        return str(self.batch.get("type") or "local")

    @cached_property
    def by_name(self) -> dict[str, StepInstance]:
        """Instances by name."""
        return {s.name: s for s in self.steps}

    @cached_property
    def children(self) -> dict[str, tuple[str, ...]]:
        """Instance name -> names of the instances that wait for it."""
        out: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for s in self.steps:
            for p in s.parents:
                out[p].append(s.name)
        return {k: tuple(v) for k, v in out.items()}

    def bfs_order(self) -> list[str]:
        """Instance names in breadth-first order from the roots (Maestro's status order).

        Roots come in spec order; a node is listed the first time it is reached.
        """
        children = self.children
        seen: set[str] = set()
        order: list[str] = []
        queue = deque(s.name for s in self.steps if not s.parents)
        seen.update(queue)
        while queue:
            name = queue.popleft()
            order.append(name)
            for child in children[name]:
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return order

    def descendants(self, name: str) -> set[str]:
        """Every instance reachable from ``name`` (not including it)."""
        children = self.children
        out: set[str] = set()
        stack = list(children[name])
        while stack:
            n = stack.pop()
            if n not in out:
                out.add(n)
                stack.extend(children[n])
        return out
