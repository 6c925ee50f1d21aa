"""A Merlin study's ``merlin_info/``: the spec copies, and the samples made and read.

Before any step runs, ``prepare_merlin`` lays out ``<study>/merlin_info/`` as
``merlin run`` does: ``<base>.orig.yaml`` (the spec as written), ``<base>.partial.yaml``
(the user's variables substituted) and ``<base>.expanded.yaml`` (every token the study
knows substituted); then, for a spec with ``merlin.samples``, it runs ``generate.cmd``
in ``merlin_info/`` if the samples file does not exist yet (its command, output and
errors kept as ``cmd.sh``, ``cmd.out`` and ``cmd.err``), reads the file, and keeps a copy
of it in ``merlin_info/`` (and ``meta/samples/index.json``, ``engine.samplestatus``). A command that fails, or a file that is missing or
unreadable afterwards, is a ``SamplesError``: the study fails before any step runs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

from engine.errors import ConfigError
from engine.samplestatus import write_index
from engine.spec.graph import StudyGraph
from engine.spec.samples import SampleLayout, SampleTable, read_samples

__all__ = ["Samples", "SamplesError", "prepare_merlin"]


class SamplesError(ConfigError):
    """The samples could not be made or read: the study cannot run."""


@dataclass(frozen=True)
class Samples:
    """A study's samples, read, and where each one lives."""

    table: SampleTable
    layout: SampleLayout

    @property
    def n(self) -> int:
        return self.table.n


def _write_copies(graph: StudyGraph, text: str) -> None:
    info = Path(graph.merlin_info)
    base = Path(graph.spec_path).stem
    (info / f"{base}.orig.yaml").write_text(text)
    partial = text
    for name, value in graph.variables.items():
        if name not in ("OUTPUT_PATH", "SPECROOT"):
            partial = partial.replace(f"$({name})", value)
    (info / f"{base}.partial.yaml").write_text(partial)
    expanded = partial
    for name, value in graph.variables.items():
        expanded = expanded.replace(f"$({name})", value)
    (info / f"{base}.expanded.yaml").write_text(expanded)


async def _generate(graph: StudyGraph, file: str) -> None:
    assert graph.samples is not None
    info = Path(graph.merlin_info)
    cmd = graph.samples.generate
    (info / "cmd.sh").write_text(cmd)
    with open(info / "cmd.out", "wb") as out, open(info / "cmd.err", "wb") as err:
        proc = await anyio.run_process(["/bin/sh", "-c", cmd], cwd=info, stdout=out,
                                       stderr=err, check=False)
    if proc.returncode != 0:
        raise SamplesError(f"merlin.samples.generate.cmd exited {proc.returncode} (see "
                           f"{info / 'cmd.err'})")
    if not os.path.exists(file):
        raise SamplesError(f"merlin.samples.generate.cmd did not write {file} (see "
                           f"{info / 'cmd.out'})")


async def prepare_merlin(graph: StudyGraph, *, samples_file: str | None = None,
                         spec_text: str | None = None) -> Samples | None:
    """Lay out ``merlin_info/`` and make and read the samples (see the module docstring).

    Args:
        graph: A Merlin study (its directory prepared).
        samples_file: ``--samplesfile``: use this file, never generate one (Merlin's rule).
        spec_text: The spec's text (else read from ``graph.spec_path``).

    Returns:
        The samples, or None for a spec without ``merlin.samples``.

    Raises:
        SamplesError: generation failed, or the file is missing or unreadable.
    """
    info = Path(graph.merlin_info)
    info.mkdir(exist_ok=True)
    try:
        text = spec_text if spec_text is not None else Path(graph.spec_path).read_text()
        _write_copies(graph, text)
    except (OSError, UnicodeDecodeError) as exc:
        raise SamplesError(f"cannot write {info}: {exc}") from exc
    spec = graph.samples
    if spec is None:
        return None
    file = samples_file or spec.file
    if samples_file is None and spec.generate and not os.path.exists(file):
        await _generate(graph, file)
    try:
        table = await anyio.to_thread.run_sync(read_samples, file, spec.labels)
    except ValueError as exc:
        raise SamplesError(str(exc)) from None
    copy = info / os.path.basename(file)
    try:
        if not copy.exists():
            shutil.copyfile(file, copy)
        write_index(graph.study_dir, samples_file=str(copy), labels=spec.labels,
                    level_max_dirs=spec.level_max_dirs,
                    steps=[s.name for s in graph.steps if s.sampled])
    except OSError as exc:
        raise SamplesError(f"cannot keep the samples in {graph.study_dir}: {exc}") from exc
    return Samples(table=table, layout=SampleLayout(table.n, spec.level_max_dirs))
