"""Every valid Maestro spec in ../shared/peer-specs/maestro runs to FINISHED with
``enginectl run`` (LULESH ones with the offline stand-in), with the instance names the
spec layer computed; every invalid one is rejected with exit 1 and a one-line message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from engine.spec import load_study
from engine.status import read_status
from tests.conftest import PEER_SPECS, enginectl
from tests.lulesh_standin import make_lulesh_standin

MAESTRO = PEER_SPECS / "maestro"
VALID = sorted(p.name for p in MAESTRO.glob("*.y*ml"))
INVALID = sorted(p.name for p in (MAESTRO / "invalid").glob("*.y*ml"))
SCHEDULED = {"hello_bye_parameterized_slurm.yaml", "launcher_tokens.yaml"}

pytestmark = pytest.mark.skipif(not MAESTRO.is_dir(), reason="shared/peer-specs not present")


@pytest.mark.parametrize("name", VALID)
def test_peer_spec_runs_to_finished(name: str, tmp_path: Path) -> None:
    spec = MAESTRO / name
    study = tmp_path / "study"
    env = make_lulesh_standin(tmp_path) if name.startswith("lulesh") else {}
    args = ["run", str(spec), "-o", str(study)]
    if name in SCHEDULED:
        args.append("--local")  # no Slurm adapter yet: run here with $(LAUNCHER) removed
    result = enginectl(*args, cwd=tmp_path, env=env)
    assert 0 == result.returncode, result.stderr
    rows = read_status(study / "status.csv")
    expected = load_study(spec, out_dir=str(study), now=dt.datetime.now(), cwd=str(tmp_path))
    assert sorted(s.name for s in expected.steps) == sorted(r["Step Name"] for r in rows)
    assert {"FINISHED"} == {r["State"] for r in rows}
    for inst in expected.steps:
        assert Path(inst.workspace).is_dir(), inst.workspace


def test_scheduler_spec_dry_run_writes_maestros_sbatch_scripts(tmp_path: Path) -> None:
    study = tmp_path / "s"
    result = enginectl("run", str(MAESTRO / "launcher_tokens.yaml"), "-o", str(study), "--dry")
    assert 0 == result.returncode, result.stderr
    script = (study / "legacy-token-prepend" / "legacy-token-prepend.slurm.sh").read_text()
    assert script.startswith("#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --partition=queue_name\n")
    assert "srun -n 1 -N 1 echo" in script
    assert {"DRYRUN"} == {r["State"] for r in read_status(study / "status.csv")}


@pytest.mark.parametrize("name", INVALID)
def test_invalid_peer_spec_is_rejected_with_one_line(name: str, tmp_path: Path) -> None:
    spec = MAESTRO / "invalid" / name
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"))
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith(f"error: {spec}")
    validate = enginectl("validate", str(spec))
    assert 1 == validate.returncode
    assert validate.stderr.strip() == lines[0]


MERLIN = PEER_SPECS / "merlin"


@pytest.mark.parametrize("name", ["hello.yaml", "restart_shell.yaml", "simple_chain.yaml"])
def test_merlin_peer_spec_runs_to_finished(name: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    result = enginectl("run", str(MERLIN / name), "-o", str(study), cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    rows = read_status(study / "status.csv")
    assert rows and {"FINISHED"} == {r["State"] for r in rows}


def test_merlin_restart_shell_reruns_both_shells_once(tmp_path: Path) -> None:
    """step1 (bash) and step2 (python3 shebang) exit MERLIN_RESTART once, then succeed."""
    study = tmp_path / "study"
    assert 0 == enginectl("run", str(MERLIN / "restart_shell.yaml"), "-o", str(study)).returncode
    rows = {r["Step Name"]: r for r in read_status(study / "status.csv")}
    assert {"1"} == {rows["step1"]["Number Restarts"], rows["step2"]["Number Restarts"]}
    # Merlin's layout: one step2.out, which both runs append to
    assert "if 1\nif 2\n" == (study / "step2" / "step2.out").read_text()
    assert (study / "step2" / "step2.sh").read_text().startswith("#!/usr/bin/env python3\n")
