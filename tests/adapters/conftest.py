"""Fixtures for the adapter tests: step instances, stub Slurm commands, the stand-in flux."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
import pytest

from tests.adapters.support import FAKES, SlurmStub


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm (tests/slurm/slurm-up.sh)")


@pytest.fixture
def slurm_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmStub]:
    """Put stub ``sbatch``/``squeue``/``sacct``/``scancel`` first on PATH."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    state = tmp_path / "stub-state"
    state.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scancel"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES / "slurm_stub.py"}" '
                        f'{name} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_STUB_DIR", str(state))
    yield SlurmStub(state)


@pytest.fixture
def fake_flux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Put the stand-in ``flux`` first on PATH with a fresh instance state dir."""
    bin_dir = tmp_path / "flux-bin"
    bin_dir.mkdir()
    (bin_dir / "flux").symlink_to(FAKES / "flux")
    state = tmp_path / "flux-state"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TROUPE_FAKE_FLUX_DIR", str(state))
    yield state
    # Stop whatever the instance still runs, so no job outlives its test.
    for cancel in (state / "jobs").glob("*.json") if state.exists() else ():
        rec = json.loads(cancel.read_text())
        if rec["state"] != "INACTIVE":
            cancel.with_suffix(".cancel").write_text("test teardown")
