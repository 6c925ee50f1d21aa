"""The study directory on disk, laid out as Maestro lays it out, and its dependencies.

``prepare_study_dir`` creates ``<study>/`` with a copy of the spec (original basename),
``batch.info``, ``meta/`` (``study.json``: the expanded graph with every step's dependencies,
workspace and parameters; the embedded NATS store goes under ``meta/nats``) and ``logs/``. It never deletes or overwrites a user's files: an existing,
non-empty study directory is an error. ``acquire_dependencies`` clones git dependencies
(``git clone`` + checkout of tag/branch/hash into ``<path>/<name>``) and checks that path
dependencies exist, as Maestro does before launching. ``read_study_graph`` reads the
expanded graph back from ``meta/study.json`` (``enginectl restart DIR``, ``enginectl graph DIR``).
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

__all__ = ["STUDY_FILE", "acquire_dependencies", "prepare_study_dir", "read_study_graph"]

STUDY_FILE = ("meta", "study.json")
"""Where a study directory keeps its expanded graph, relative to the directory."""


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
        root.joinpath(*STUDY_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(graph)))
    except OSError as exc:
        raise ConfigError(f"cannot create study directory {root}: {exc.strerror or exc}") from exc
    return root


def read_study_graph(study_dir: str | os.PathLike[str]) -> StudyGraph:
    """The graph a study directory was created with (``meta/study.json``, written by
    ``prepare_study_dir`` under both ``run`` and ``serve``).

    Raises:
        ConfigError: the directory holds no readable ``meta/study.json`` (it is not a study
            directory, or the file is damaged); the message names the directory.
    """
    try:
        return msgspec.json.decode(Path(study_dir).joinpath(*STUDY_FILE).read_bytes(),
                                   type=StudyGraph)
    except OSError as exc:
        raise ConfigError(f"{study_dir}: not a study directory (no readable "
                          f"{'/'.join(STUDY_FILE)}: {exc.strerror or exc})") from exc
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{study_dir}: {'/'.join(STUDY_FILE)} is damaged ({exc})") from exc


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

