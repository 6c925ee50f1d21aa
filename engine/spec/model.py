"""Typed, frozen msgspec Structs for a Maestro study spec exactly as written (no expansion).

These mirror the YAML blocks that Maestro reads (``description``, ``env``, ``batch``, ``study``,
``global.parameters``) plus Troupe's own ``troupe:`` block. The loader validates the raw YAML
first, with Maestro's rules and field-path error messages, and only then converts it into
these Structs, so holding a :class:`Spec` means the spec passed validation. Run keys that
contain spaces in YAML (``cores per task``) are snake_case fields here, renamed on decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.spec.samples import SampleSpec

__all__ = [
    "INT_RESOURCE_KEYS",
    "RUN_KEYS",
    "Dependencies",
    "Description",
    "Env",
    "GitDep",
    "Parameter",
    "PathDep",
    "Run",
    "Spec",
    "Step",
]

#: The keys Maestro's schema allows in a step's ``run`` block (``additionalProperties: false``).
RUN_KEYS: tuple[str, ...] = (
    "cmd", "depends", "pre", "post", "restart", "nodes", "procs", "gpus", "cores per task",
    "tasks per rs", "rs per node", "cpus per rs", "bind", "bind gpus", "walltime",
    "reservation", "exclusive", "nested", "waitable", "priority", "qos",
)  # fmt: skip

#: Integer resource keys and their minimum value; each may also be exactly ``$(VAR)``.
INT_RESOURCE_KEYS: dict[str, int] = {
    "nodes": 1, "procs": 1, "gpus": 0, "cores per task": 1,
    "tasks per rs": 1, "rs per node": 1, "cpus per rs": 1,
}  # fmt: skip

_SPACED = {k.replace(" ", "_"): k for k in RUN_KEYS if " " in k}


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """``description:``; Maestro allows (and ignores) extra keys."""

    name: str
    description: str


class Run(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename=_SPACED):
    """A step's ``run:`` block. Strings may still contain ``$(TOKEN)`` references."""

    cmd: str
    depends: tuple[str, ...] = ()
    pre: str = ""
    post: str = ""
    restart: str = ""
    nodes: int | str | None = None
    procs: int | str | None = None
    gpus: int | str | None = None
    cores_per_task: int | str | None = None
    tasks_per_rs: int | str | None = None
    rs_per_node: int | str | None = None
    cpus_per_rs: int | str | None = None
    bind: str | None = None
    bind_gpus: str | None = None
    walltime: int | str | None = None
    reservation: str | None = None
    exclusive: bool | str | dict[str, bool | str] | None = None
    nested: bool | None = None
    waitable: bool | None = None
    priority: float | str | None = None
    qos: str | None = None
    # Troupe's keys (engine.spec.extensions); Maestro's schema rejects them.
    group: str | None = None
    restart_limit: int | None = None
    retry: dict[str, float] | None = None
    when: str | None = None
    group_by: tuple[str, ...] | None = None
    race: str | None = None
    inputs: tuple[str, ...] | None = None
    queue: str | None = None  # the workers' queue (troupe.executor: workers)
    # Merlin's keys, accepted when the spec has a ``merlin:`` block.
    max_retries: int | None = None
    retry_delay: float | None = None
    shell: str | None = None
    task_queue: str | None = None
    batch: dict[str, str] | None = None


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``study:``."""

    name: str
    description: str
    run: Run


class PathDep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``env.dependencies.paths[i]``: ``$(name)`` becomes ``path``."""

    name: str
    path: str


class GitDep(msgspec.Struct, frozen=True, kw_only=True):
    """``env.dependencies.git[i]``: cloned into ``path/name``; extra keys are ignored."""

    name: str
    path: str
    url: str
    tag: str = ""
    hash: str = ""
    branch: str = ""


class Dependencies(msgspec.Struct, frozen=True, kw_only=True):
    """``env.dependencies``; ``spack`` is accepted but has no behaviour (as in Maestro)."""

    paths: tuple[PathDep, ...] = ()
    git: tuple[GitDep, ...] = ()
    spack: dict[str, Any] | None = None


class Env(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``env:``. Insertion order of ``variables`` and ``labels`` matters for substitution."""

    variables: dict[str, str | int | float] = msgspec.field(default_factory=dict)
    labels: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    sources: tuple[Any, ...] = ()
    dependencies: Dependencies = Dependencies()


class Parameter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``global.parameters.<KEY>``: zipped values and a label containing ``%%``."""

    values: tuple[Any, ...]
    label: str


class Spec(msgspec.Struct, frozen=True, kw_only=True):
    """A whole validated spec.

    Attributes:
        path: The spec file as the user named it (used in error messages).
        description: ``description:``.
        env: ``env:`` (empty when absent).
        batch: ``batch:`` as written (not validated, as in Maestro); ``{}`` when absent.
        study: The steps, in file order.
        parameters: ``global.parameters``, in file order.
        troupe: The top-level ``troupe:`` block, ``{}`` when absent.
        merlin: The spec has a ``merlin:`` block (Merlin's keys and exit codes apply).
        samples: ``merlin.samples``, validated (None without samples).
        warnings: Keys that are read but ignored (``engine.spec.ignored``).
    """

    path: str
    description: Description
    study: tuple[Step, ...]
    env: Env = Env()
    batch: dict[str, Any] = msgspec.field(default_factory=dict)
    parameters: dict[str, Parameter] = msgspec.field(default_factory=dict)
    troupe: dict[str, Any] = msgspec.field(default_factory=dict)
    merlin: bool = False
    samples: SampleSpec | None = None
    warnings: tuple[str, ...] = ()
