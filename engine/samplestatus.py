"""Each sample's state on disk, and the query behind ``enginectl status --step S``.

A study with sampled steps keeps ``meta/samples/index.json`` (the samples file's copy in
``merlin_info/``, its column labels, ``level_max_dirs``, and for each sampled step
instance the file of its states) and, per sampled step instance, ``<n>.states``: one
byte per sample (``engine.machines.samples.CODES``), rewritten atomically while the step
runs (at most once a second) and when it ends. ``query_samples`` reads them back with
the samples' values, so that the failed samples of a 150,000-sample study can be listed
(Merlin#238) from the study directory alone, under ``run`` or ``serve`` alike.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.machines.samples import SOFT, state_name
from engine.spec.samples import SampleLayout, read_samples

__all__ = ["query_samples", "write_index", "write_states"]

_INDEX = ("meta", "samples", "index.json")


def _dir(study_dir: str) -> Path:
    return Path(study_dir, *_INDEX[:-1])


def write_index(study_dir: str, *, samples_file: str, labels: tuple[str, ...],
                level_max_dirs: int, steps: list[str]) -> None:
    """Write ``index.json`` (the steps' states files are numbered in ``steps`` order)."""
    folder = _dir(study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"samples_file": samples_file, "labels": list(labels),
             "level_max_dirs": level_max_dirs,
             "steps": {name: f"{i}.states" for i, name in enumerate(steps)}}
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def write_states(study_dir: str, number: int, codes: bytes) -> None:
    """Atomically replace step ``number``'s states file."""
    target = _dir(study_dir) / f"{number}.states"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(codes)
    os.replace(tmp, target)


def query_samples(study_dir: str, step: str, state: str = "") -> list[dict[str, Any]]:
    """The samples of the sampled step instances matching ``step`` (an instance or spec
    step name, or a glob), with their state, id, directory and values; only those in
    ``state`` if given.

    Raises:
        ConfigError: the study has no sampled step, none matches, or its files are
            unreadable.
    """
    folder = _dir(study_dir)
    try:
        index = json.loads((folder / "index.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{study_dir}: no sampled step (no meta/samples/index.json)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / 'index.json'}: unreadable: {exc}") from exc
    steps = {name: f for name, f in index["steps"].items()
             if fnmatch.fnmatchcase(name, step) or fnmatch.fnmatchcase(name, f"{step}_*")
             or name == step}
    if not steps:
        raise ConfigError(f"no sampled step matches '{step}' (sampled steps: "
                          f"{', '.join(sorted(index['steps']))})")
    want = state.upper()
    table = None
    out: list[dict[str, Any]] = []
    for name, file in steps.items():
        try:
            codes = (folder / file).read_bytes()
        except FileNotFoundError:
            codes = b""  # not started yet
        except OSError as exc:
            raise ConfigError(f"{folder / file}: unreadable: {exc}") from exc
        if table is None:
            try:
                table = read_samples(index["samples_file"], index["labels"])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        layout = SampleLayout(table.n, index["level_max_dirs"])
        for i in range(table.n):
            st = state_name(codes[i]) if i < len(codes) else "INITIALIZED"
            if want and st != want:
                continue
            out.append({"step": name, "sample": i, "path": layout.path(i), "state": st,
                        "soft": bool(i < len(codes) and codes[i] & SOFT),
                        "values": dict(zip(table.labels, table.row(i)))})
    return out
