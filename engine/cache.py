"""Memoized re-runs: a cache key per step instance, and reuse of a previous study's results.

A step's key is a SHA-256 over its expanded command and restart command, its parameter
values, the study's plain variables, the keys of its dependencies, its backend resources,
and the content of the files it declares in ``run.inputs`` (paths relative to the spec's
directory). Paths inside the study directory enter the key relative to it, so a re-run
into a new directory can reuse the old one's results. ``<study>/meta/cache.json`` maps
each step that ended FINISHED (or CACHED) to its key. ``enginectl run SPEC --reuse DIR``
marks every step whose key matches one there CACHED and copies its workspace over, so after
a fix to one step, a re-run runs that step and its descendants and nothing else.
A cache directory configured as ``troupe: {cache: DIR}`` works the same without
``--reuse``: every run reuses what ``DIR/index.json`` knows (key -> a FINISHED
workspace) and adds its own FINISHED steps to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
import msgspec

from engine.errors import ConfigError
from engine.machines.step import StepRecord
from engine.messages import StepState
from engine.spec.graph import StudyGraph

__all__ = [
    "cache_dir_of",
    "record_cache",
    "reuse_cached",
    "cache_keys",
    "load_cache_dir",
    "load_previous",
    "reuse_workspaces",
    "update_cache_dir",
    "write_cache",
]

_DONE = {StepState.FINISHED.value, StepState.CACHED.value}


def _relative(text: str, study_dir: str) -> str:
    return text.replace(study_dir.rstrip("/"), "$(OUTPUT_PATH)")


def cache_keys(graph: StudyGraph) -> dict[str, str]:
    """The cache key of every step instance (parents before children).

    Raises:
        ConfigError: a declared input file cannot be read.
    """
    root = graph.study_dir
    spec_dir = os.path.dirname(graph.spec_path)
    variables = sorted((k, _relative(v, root)) for k, v in graph.variables.items()
                       if k not in ("OUTPUT_PATH", "SPECROOT"))  # in cmd if used
    keys: dict[str, str] = {}
    for inst in graph.steps:
        h = hashlib.sha256()
        parts = {
            "cmd": _relative(inst.cmd, root),
            "restart": _relative(inst.restart, root),
            "params": list(inst.params),
            "variables": variables,
            "parents": sorted(keys[p] for p in inst.parents),
            "resources": msgspec.to_builtins(inst.resources),
            "shell": inst.shell or str(graph.batch.get("shell") or ""),
        }
        h.update(json.dumps(parts, sort_keys=True).encode())
        for rel in inst.inputs:
            path = Path(spec_dir, rel)
            try:
                with open(path, "rb") as fh:
                    h.update(rel.encode() + b"\0")
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as exc:
                raise ConfigError(f"{graph.spec_path}: {inst.step}.run.inputs: cannot read "
                                  f"{path}: {exc.strerror or exc}") from exc
        keys[inst.name] = h.hexdigest()
    return keys


def load_previous(study_dir: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """``step -> (key, workspace)`` of the steps that ended FINISHED or CACHED in an
    earlier study directory.

    Raises:
        ConfigError: the directory has no readable ``meta/cache.json``.
    """
    path = Path(study_dir) / "meta" / "cache.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--reuse: {path}: no cache record of a previous study ({exc})") from exc
    return {step: (e["key"], e["workspace"]) for step, e in data["steps"].items()
            if e.get("state") in _DONE}


def write_cache(graph: StudyGraph, keys: Mapping[str, str],
                records: Mapping[str, StepRecord]) -> None:
    """Record every keyed step's key, state and workspace in ``<study>/meta/cache.json``
    (a step without a key, such as one over samples, is not recorded)."""
    steps = {name: {"key": keys[name], "state": rec.state.value,
                    "workspace": graph.by_name[name].workspace}
             for name, rec in records.items() if name in keys}
    path = Path(graph.study_dir) / "meta" / "cache.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "steps": steps}, indent=1))
    os.replace(tmp, path)


def reuse_workspaces(graph: StudyGraph, keys: Mapping[str, str],
                     previous: Mapping[str, tuple[str, str]]) -> list[str]:
    """Copy the workspace of every step whose key matches a previous FINISHED one.

    Returns:
        The names of the cached steps.
    """
    cached = []
    for inst in graph.steps:
        prev = previous.get(inst.name)
        if prev is None or prev[0] != keys[inst.name] or not os.path.isdir(prev[1]):
            continue
        if os.path.abspath(prev[1]) != os.path.abspath(inst.workspace):
            shutil.copytree(prev[1], inst.workspace, dirs_exist_ok=True, symlinks=True)
        cached.append(inst.name)
    return cached


def load_cache_dir(cache_dir: str) -> dict[str, tuple[str, str]]:
    """``key -> (key, workspace)`` from a cache directory's index (empty if none yet),
    shaped like ``load_previous`` but keyed by cache key."""
    try:
        data = json.loads((Path(cache_dir) / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: (k, ws) for k, ws in data.get("keys", {}).items()}


def update_cache_dir(cache_dir: str, keys: Mapping[str, str], graph: StudyGraph,
                     records: Mapping[str, StepRecord]) -> None:
    """Add this study's FINISHED steps to a cache directory's index."""
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads((root / "index.json").read_text())
    except (OSError, ValueError):
        data = {"version": 1, "keys": {}}
    for name, rec in records.items():
        if rec.state == StepState.FINISHED and name in keys:
            data["keys"][keys[name]] = graph.by_name[name].workspace
    tmp = root / ".index.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, root / "index.json")


def cache_dir_of(graph: StudyGraph) -> str:
    """``troupe.cache`` made absolute against the spec's directory ("" if unset)."""
    from engine.settings import troupe_settings

    cache = troupe_settings(graph).cache
    return os.path.join(os.path.dirname(graph.spec_path), cache) if cache else ""


def reuse_cached(graph: StudyGraph, keys: Mapping[str, str], *,
                 reuse_dir: str = "") -> list[str]:
    """Reproduce the workspaces of the steps whose cache key matches a FINISHED step of
    ``reuse_dir`` (an earlier study) or of the ``troupe.cache`` index, and return their
    names: the runtime marks them CACHED (``CacheHit``). Nothing is reused without keys
    or without a place to reuse from.

    Raises:
        ConfigError: ``reuse_dir`` has no readable cache record.
    """
    cache_dir = cache_dir_of(graph)
    if not keys or not (reuse_dir or cache_dir):
        return []
    previous: dict[str, tuple[str, str]] = {}
    if cache_dir:
        by_key = load_cache_dir(cache_dir)
        previous = {n: by_key[k] for n, k in keys.items() if k in by_key}
    if reuse_dir:
        previous |= load_previous(reuse_dir)
    return reuse_workspaces(graph, keys, previous)


def record_cache(graph: StudyGraph, keys: Mapping[str, str],
                 records: Mapping[str, StepRecord]) -> None:
    """What a later ``--reuse`` (or the ``troupe.cache`` directory) finds: the keys of this
    study's FINISHED and CACHED steps, in ``meta/cache.json`` and the cache index."""
    if not keys:
        return
    write_cache(graph, keys, records)
    if cache_dir := cache_dir_of(graph):
        update_cache_dir(cache_dir, keys, graph, records)
