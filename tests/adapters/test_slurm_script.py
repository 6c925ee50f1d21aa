"""Slurm script generation: byte-for-byte against ``maestro run --dry``, then rule by rule."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from adapters.flux_script import flux_script
from adapters.slurm_script import (
    HeaderError, is_scheduled, script_name, slurm_exit_file, slurm_header, slurm_script,
    supports_trailer,
)  # fmt: skip
from engine.spec import load_study
from tests.adapters.support import make_step
from tests.conftest import PEER_SPECS, needs_peer_specs

MAESTRO = Path(sys.executable).with_name("maestro")


@needs_peer_specs
@pytest.mark.parametrize("spec", ["hello_bye_parameterized_slurm.yaml", "launcher_tokens.yaml"])
def test_scripts_match_maestro_dry_run(spec: str, tmp_path: Path) -> None:
    """Every scheduled step's script equals the ``<name>.slurm.sh`` Maestro writes."""
    spec_path = PEER_SPECS / "maestro" / spec
    theirs_dir, ours_dir = tmp_path / "maestro", tmp_path / "troupe"
    subprocess.run([str(MAESTRO), "run", "--dry", "-fg", "-y", "-o", str(theirs_dir),
                    str(spec_path)], cwd=tmp_path, check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    graph = load_study(spec_path, out_dir=str(ours_dir), now=datetime.datetime.now(),
                       cwd=str(tmp_path))  # fmt: skip
    shell = graph.batch.get("shell", "/bin/bash")
    scheduled = [s for s in graph.steps if is_scheduled(s)]
    assert scheduled, "the spec has scheduled steps"
    for step in scheduled:
        rel = Path(step.workspace).relative_to(ours_dir) / script_name(step)
        theirs = (theirs_dir / rel).read_text().replace(str(theirs_dir), "<STUDY>")
        ours = slurm_script(step, graph.batch, shell=shell).replace(str(ours_dir), "<STUDY>")
        assert theirs == ours, step.name


def test_header_order_with_every_key(tmp_path: Path) -> None:
    step = make_step(tmp_path, "run lulesh", "$(LAUNCHER) lulesh", description="Run\nit",
                     nodes=2, procs=27, walltime="00:10:00", gpus=1, exclusive=True,
                     qos="high", reservation="step_res")  # fmt: skip
    batch = {"type": "slurm", "queue": "pbatch", "bank": "baasic", "host": "quartz",
             "reservation": "test_reservation", "qos": "normal"}
    assert slurm_header(step, batch, shell="/bin/bash").splitlines() == [
        "#!/bin/bash",
        "#SBATCH --nodes=2",
        "#SBATCH --partition=pbatch",
        "#SBATCH --account=baasic",
        "#SBATCH --time=00:10:00",
        '#SBATCH --job-name="run_lulesh"',
        '#SBATCH --output="run_lulesh.out"',
        '#SBATCH --error="run_lulesh.err"',
        '#SBATCH --comment "Run it"',
        '#SBATCH --reservation="step_res"',
        "#SBATCH --gres=gpu:1",
        "#SBATCH --exclusive",
        "#SBATCH --qos=high",
    ]


def test_ntasks_only_when_batch_has_procs_or_there_are_no_nodes(tmp_path: Path) -> None:
    both = make_step(tmp_path, "a", "x", nodes=1, procs=4)
    procs_only = make_step(tmp_path, "b", "x", procs=4)
    assert "--ntasks" not in slurm_header(both, {}, shell="/bin/sh")
    assert "#SBATCH --ntasks=4" in slurm_header(procs_only, {}, shell="/bin/sh")
    assert "#SBATCH --ntasks=4" in slurm_header(both, {"procs": 8}, shell="/bin/sh")
    assert "#SBATCH --ntasks=8" in slurm_header(
        make_step(tmp_path, "c", "x", nodes=1), {"procs": 8}, shell="/bin/sh")


def test_batch_nodes_count_for_the_header_but_not_for_scheduling(tmp_path: Path) -> None:
    step = make_step(tmp_path, "a", "$(LAUNCHER) x", procs=1)
    text = slurm_script(step, {"nodes": 3}, shell="/bin/bash")
    assert "#SBATCH --nodes=3" in text and "--ntasks" not in text
    assert text.endswith("\n\nsrun -n 1 x\n")
    assert not is_scheduled(make_step(tmp_path, "b", "x"))


def test_an_unscheduled_step_gets_a_bare_script_with_the_token_left_alone(tmp_path: Path) -> None:
    step = make_step(tmp_path, "local", "$(LAUNCHER) echo hi\n")
    assert "#!/bin/bash\n\n$(LAUNCHER) echo hi\n\n" == slurm_script(step, {}, shell="/bin/bash")


def test_header_of_an_unscheduled_step_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=(
        r"^step 'local': no explicit resources; at least one of 'procs' or 'nodes' must be "
        r"set to a non-zero value$"
    )):  # fmt: skip
        slurm_header(make_step(tmp_path, "local", "x"), {"nodes": 1}, shell="/bin/bash")


def test_restart_script_expands_the_restart_command(tmp_path: Path) -> None:
    step = make_step(tmp_path, "a", "$(LAUNCHER) run", restart="$(LAUNCHER) resume", procs=2)
    assert slurm_script(step, {}, restart=True).endswith("\n\nsrun -n 2 resume\n")
    assert "a.restart.slurm.sh" == script_name(step, restart=True)


def test_script_names_are_sanitised_as_maestro_does(tmp_path: Path) -> None:
    assert "FAREWELL.So_long.slurm.sh" == script_name(make_step(tmp_path, "FAREWELL.So long", "x"))


@pytest.mark.parametrize(("shell", "ok"), [("/bin/bash", True), ("/bin/sh", True),
                                           ("/usr/bin/env bash", True), ("/usr/bin/python3", False)])
def test_trailer_only_for_posix_shells(shell: str, ok: bool) -> None:
    assert ok == supports_trailer(shell)


def _run_job(tmp_path: Path, cmd: str, job_id: str = "42") -> tuple[int, Path]:
    step = make_step(tmp_path, "trailer step", cmd, procs=1)
    text = slurm_script(step, {}, shell="/bin/bash",
                        exit_file=slurm_exit_file(step.workspace, step))
    script = Path(step.workspace) / script_name(step)
    script.write_text(text.replace("srun -n 1 ", ""))
    env = {**os.environ, "SLURM_JOB_ID": job_id}
    proc = subprocess.run(["/bin/bash", str(script)], cwd=step.workspace, env=env, timeout=30)
    return proc.returncode, Path(step.workspace) / f"trailer_step.{job_id}.exit"


def test_trailer_records_the_exit_status_even_after_an_explicit_exit(tmp_path: Path) -> None:
    rc, exit_file = _run_job(tmp_path, "$(LAUNCHER) true\ncd /\nexit 3\n")
    assert (3, "3\n") == (rc, exit_file.read_text())
    assert not exit_file.with_name(exit_file.name + ".tmp").exists()


def test_trailer_records_success(tmp_path: Path) -> None:
    rc, exit_file = _run_job(tmp_path, "$(LAUNCHER) echo ok")
    assert (0, "0\n") == (rc, exit_file.read_text())


def test_trailer_writes_nothing_when_the_shell_is_killed(tmp_path: Path) -> None:
    """A cancelled job (SIGTERM to the batch shell) leaves the verdict to Slurm."""
    rc, exit_file = _run_job(tmp_path, "$(LAUNCHER) true\nkill -TERM $$\nsleep 1\n")
    assert -15 == rc  # bash itself died of SIGTERM
    assert not exit_file.exists()


@pytest.mark.parametrize("name", ["sim_P.a\nrm -rf ~", "sim\rx", "sim\x00x"])
def test_a_control_character_never_reaches_a_scheduler_header(tmp_path: Path, name: str) -> None:
    """A newline in a step name would end ``#SBATCH --job-name=`` and make the rest a line
    of the script; such a header is refused, for Slurm and for Flux."""
    (tmp_path / "ws").mkdir()
    step = make_step(tmp_path / "ws", "ok", "hostname", nodes=1, procs=1)
    step = msgspec.structs.replace(step, name=name)
    with pytest.raises(HeaderError) as info:
        slurm_header(step, {"type": "slurm"}, shell="/bin/bash")
    assert name == info.value.step
    with pytest.raises(HeaderError):
        flux_script(step, {"type": "flux"}, shell="/bin/bash")


def test_a_control_character_in_a_batch_setting_is_refused_too(tmp_path: Path) -> None:
    step = make_step(tmp_path, "ok", "hostname", nodes=1, procs=1)
    with pytest.raises(HeaderError, match=r"partition"):
        slurm_header(step, {"type": "slurm", "queue": "pbatch\n#SBATCH --uid=0"},
                     shell="/bin/bash")
