"""The engine on a real single-node Slurm (started by tests/slurm/slurm-up.sh; skipped
when no Slurm answers): a Maestro peer spec runs to FINISHED; a failing job, a job past
its time limit (then its restart), jobs re-adopted after the engine was SIGKILLed (never
resubmitted, checked in sacct), and a cancel seen by sacct."""

from __future__ import annotations

import time as _time
import subprocess
from pathlib import Path

import pytest

from engine.status import read_status
from tests.conftest import PEER_SPECS, enginectl, needs_peer_specs, slurm_up, wait_for_path
from tests.engine_proc import Engine


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not slurm_up(), reason="no Slurm running")]


def sacct_jobs(study_id: str) -> list[dict[str, str]]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", "now-2hours", "-o", "JobID,JobName,State,ExitCode,Comment"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        job_id, name, state, code, comment = line.split("|", 4)
        if study_id in comment:
            rows.append({"id": job_id, "name": name, "state": state, "exit": code})
    return rows


@needs_peer_specs
def test_peer_slurm_spec_runs_to_finished_on_the_local_partition(tmp_path: Path) -> None:
    text = (PEER_SPECS / "maestro" / "hello_bye_parameterized_slurm.yaml").read_text()
    spec = tmp_path / "hb.yaml"
    spec.write_text(text.replace("queue       : pdebug", "queue       : debug")
                    .replace("bank        : wbronze", 'bank        : ""'))
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"), timeout=180)
    assert 0 == result.returncode, result.stderr
    rows = read_status(tmp_path / "s" / "status.csv")
    assert 8 == len(rows) and {"FINISHED"} == {r["State"] for r in rows}
    assert all(r["Job ID"].isdigit() for r in rows), "every step ran as a Slurm job"


SPEC = """description: {{name: onslurm, description: engine on slurm}}
batch: {{type: slurm, queue: debug, bank: ""}}
study:
{sleepers}
  - name: fail3
    description: exits 3
    run: {{cmd: "exit 3", procs: 1}}
  - name: slow
    description: outlives its time limit, then restarts
    run:
      cmd: "sleep 300"
      restart: "echo restarted > restarted.txt"
      walltime: "00:01:00"
      procs: 1
"""


def test_jobs_are_readopted_after_sigkill_and_failures_timeouts_map_to_maestro_states(
    engine: Engine, tmp_path: Path
) -> None:
    sleepers = "\n".join(
        f"  - {{name: sleep{i}, description: s, run: {{cmd: 'touch started; sleep 10; echo {i} > done.txt', procs: 1}}}}"
        for i in range(5))
    spec = tmp_path / "slurm.yaml"
    spec.write_text(SPEC.format(sleepers=sleepers))
    study_dir = tmp_path / "study"
    sub = engine.ctl("submit", str(spec), "-o", str(study_dir))
    assert 0 == sub.returncode, sub.stderr
    study_id = sub.stdout.strip()
    for i in range(5):  # all five jobs are running on Slurm
        wait_for_path(study_dir / f"sleep{i}" / "started", timeout=60)
    engine.kill()
    engine.start()
    watched = engine.ctl("watch", study_id, timeout=300)
    assert 2 == watched.returncode, watched.stderr  # fail3 fails the study
    steps = {s["step"]: s for s in engine.status(study_id)["steps"]}
    assert {f"sleep{i}": "FINISHED" for i in range(5)} == {
        k: v["state"] for k, v in steps.items() if k.startswith("sleep")}
    assert ("FAILED", 3) == (steps["fail3"]["state"], steps["fail3"]["exit_code"])
    assert ("FINISHED", 2, 1) == (steps["slow"]["state"], steps["slow"]["attempt"],
                                  steps["slow"]["restarts"])
    assert "restarted\n" == (study_dir / "slow" / "restarted.txt").read_text()
    deadline = _time.monotonic() + 30
    while len(jobs := sacct_jobs(study_id)) < 8:  # slurmdbd records ends a moment later
        assert _time.monotonic() < deadline, jobs
        _time.sleep(0.2)
    per_step: dict[str, int] = {}
    for job in jobs:
        per_step[job["name"]] = per_step.get(job["name"], 0) + 1
    assert {f"sleep{i}": 1 for i in range(5)} == {k: v for k, v in per_step.items()
                                                   if k.startswith("sleep")}, jobs
    assert any(j["name"] == "slow" and j["state"] == "TIMEOUT" for j in jobs), jobs


def test_cancel_is_carried_out_by_slurm(engine: Engine, tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text('description: {name: cancelme, description: c}\n'
                    'batch: {type: slurm, queue: debug, bank: ""}\n'
                    'study:\n  - {name: long, description: l, run: {cmd: "touch started; sleep 300", procs: 1}}\n')
    study_id = engine.ctl("submit", str(spec), "-o", str(tmp_path / "s")).stdout.strip()
    wait_for_path(tmp_path / "s" / "long" / "started", timeout=60)
    assert 0 == engine.ctl("cancel", study_id).returncode
    assert 3 == engine.ctl("watch", study_id, timeout=120).returncode
    deadline = _time.monotonic() + 30
    while not (jobs := sacct_jobs(study_id)):  # slurmdbd records the end a moment later
        assert _time.monotonic() < deadline, "no accounting record of the job"
        _time.sleep(0.2)
    assert 1 == len(jobs) and jobs[0]["state"].startswith("CANCELLED"), jobs
