"""Merlin's per-step ``batch: {type: flux}`` in a local study: that step goes to Flux (the
stand-in CLI), the others run here, all through ``enginectl run``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import enginectl

SPEC = """
description: {name: mixed, description: one step on Flux in a local study}
batch: {type: local}
study:
  - name: here
    description: a local step
    run: {cmd: echo here > where.txt, task_queue: q}
  - name: there
    description: Merlin's step-level batch override
    run:
      cmd: echo there > where.txt
      depends: [here]
      procs: 1
      nodes: 1
      batch: {type: flux}
merlin: {}
"""


def test_a_step_with_its_own_batch_type_runs_on_that_adapter(tmp_path: Path,
                                                             fake_flux: Path) -> None:
    spec = tmp_path / "mixed.yaml"
    spec.write_text(SPEC)
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), env=dict(os.environ))
    assert 0 == result.returncode, result.stderr
    assert "here\n" == (study / "here" / "where.txt").read_text()
    assert "there\n" == (study / "there" / "where.txt").read_text()
    assert (study / "there" / "there.flux.sh").exists()  # written for Flux
    assert not (study / "here" / "here.flux.sh").exists()
    jobs = [json.loads(p.read_text()) for p in (fake_flux / "jobs").glob("*.json")]
    assert 1 == len(jobs)  # only `there` went to Flux


def test_an_unknown_step_batch_type_is_refused_at_validation(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.replace("{type: flux}", "{type: lsf}"))
    result = enginectl("validate", str(spec))
    assert 1 == result.returncode
    assert "study[1].run.batch.type: unknown batch type 'lsf'" in result.stderr
