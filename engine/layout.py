"""The study directory on disk, laid out as Maestro lays it out, and its dependencies.

``prepare_study_dir`` creates ``<study>/`` with a copy of the spec (original basename),
``batch.info``, ``meta/`` (``study.json``: the expanded graph with every step's dependencies,
workspace and parameters; the embedded NATS store goes under ``meta/nats``) and ``logs/``. It never deletes or overwrites a user's files: an existing,
non-empty study directory is an error. ``acquire_dependencies`` clones git dependencies
(``git clone`` + checkout of tag/branch/hash into ``<path>/<name>``) and checks that path
dependencies exist, as Maestro does before launching.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import msgspec
import yaml

from engine.errors import ConfigError
from engine.spec.graph import StudyGraph

__all__ = ["acquire_dependencies", "prepare_study_dir"]


def prepare_study_dir(
    graph: StudyGraph, *, pgen: str | None = None, spec_text: str | None = None
) -> Path:
    """Create the study directory and its metadata.

    Raises:
        ConfigError: the directory exists and is not empty, or cannot be created.
    """
    root = Path(graph.study_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(
            f"output directory {root} already exists and is not empty; "
            "choose another with -o (nothing was changed)"
        )
    try:
        (root / "meta").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        copy = root / Path(graph.spec_path).name
        if spec_text is None:
            shutil.copy2(graph.spec_path, copy)
        else:
            copy.write_text(spec_text)
        if pgen:
            shutil.copy2(pgen, root / Path(pgen).name)
        (root / "batch.info").write_text(yaml.safe_dump(dict(graph.batch), sort_keys=False))
        (root / "meta" / "study.json").write_bytes(msgspec.json.format(msgspec.json.encode(graph)))
    except OSError as exc:
        raise ConfigError(f"cannot create study directory {root}: {exc.strerror or exc}") from exc
    return root


async def acquire_dependencies(graph: StudyGraph) -> None:
    """Clone git dependencies and check path dependencies.

    Raises:
        ConfigError: a path is missing, a clone target already exists, or git failed
            (the message carries git's own last line).
    """
    for dep in graph.paths:
        if not os.path.exists(dep.path):
            raise ConfigError(f"env.dependencies.paths: {dep.name}: path {dep.path} does not exist")
    for dep in graph.git:
        target = Path(dep.target)
        if target.exists():
            raise ConfigError(f"env.dependencies.git: {dep.name}: {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        await _git(dep.name, ["clone", dep.url, str(target)])
        ref = dep.hash or dep.tag or dep.branch
        if ref:
            await _git(dep.name, ["checkout", ref], cwd=target)


async def _git(name: str, args: list[str], cwd: Path | None = None) -> None:
    try:
        result = await anyio.run_process(["git", *args], cwd=cwd, check=False)
    except OSError as exc:
        raise ConfigError(f"env.dependencies.git: {name}: cannot run git: {exc}") from exc
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        raise ConfigError(f"env.dependencies.git: {name}: git {args[0]} failed: {detail}")

