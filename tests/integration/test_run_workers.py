"""``enginectl run-workers SPEC`` starts the workers a Merlin spec's
``merlin.resources.workers`` names (each serving the queues of its steps), and
``enginectl stop-workers`` stops them. A real serve engine, real worker processes."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import alive, enginectl, slurm_up

SPEC = """
description: {{name: merlinish, description: two worker kinds}}
troupe: {{executor: workers}}
study:
  - name: simulate
    description: on the simulation workers
    run:
      cmd: echo "simulate $TROUPE_WORKER" >> {ledger}
      task_queue: sims
  - name: learn
    description: on the learner
    run:
      cmd: echo "learn $TROUPE_WORKER" >> {ledger}
      task_queue: learning
      depends: [simulate]
merlin:
  resources:
    workers:
      simworkers: {{args: -l INFO --concurrency 3 --prefetch-multiplier 1, steps: [simulate]}}
      learner: {{args: -l INFO, steps: [learn]}}
"""


def test_run_workers_starts_what_the_spec_names_and_stop_workers_stops_them(
        engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(ledger=ledger))
    echo = enginectl("run-workers", str(spec), "--echo", "--state-dir", str(engine.state))
    assert 0 == echo.returncode, echo.stderr
    assert [f"enginectl worker --name simworkers --queues sims --concurrency 3 --state-dir "
            f"{engine.state}",
            f"enginectl worker --name learner --queues learning --state-dir {engine.state}"
            ] == echo.stdout.splitlines()
    started = enginectl("run-workers", str(spec), "--state-dir", str(engine.state),
                        "--log-dir", str(tmp_path))
    assert 0 == started.returncode, started.stderr
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", started.stdout)]
    assert 2 == len(pids)
    try:
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--wait")
        assert 0 == result.returncode, result.stderr
        assert ["simulate simworkers", "learn learner"] == ledger.read_text().splitlines()
        stop = engine.ctl("stop-workers", "--queues", "learning")
        assert 0 == stop.returncode, stop.stderr
        deadline = time.monotonic() + 30
        while alive(pids[1]):
            assert time.monotonic() < deadline, "the learner did not stop"
            time.sleep(0.05)
        assert alive(pids[0])  # it serves another queue: still there
        assert 0 == engine.ctl("stop-workers").returncode  # everyone
        while alive(pids[0]):
            assert time.monotonic() < deadline + 30, "the simulation worker did not stop"
            time.sleep(0.05)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up(), reason="no Slurm running")
def test_batch_workers_run_inside_slurm_jobs_that_end_when_they_stop(
        engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(ledger=ledger).replace(
        "      learner: {args: -l INFO, steps: [learn]}\n", "").replace(
        "steps: [simulate]", "steps: [all]"))
    started = enginectl("run-workers", str(spec), "--batch", "--state-dir", str(engine.state),
                        "--log-dir", str(tmp_path))
    assert 0 == started.returncode, started.stderr
    [job] = re.findall(r"as Slurm job (\d+)", started.stdout)
    try:
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--wait",
                            timeout=180)
        assert 0 == result.returncode, result.stderr
        assert ["simulate simworkers", "learn simworkers"] == ledger.read_text().splitlines()
        assert 0 == engine.ctl("stop-workers").returncode
        deadline = time.monotonic() + 60
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                             text=True).stdout.strip():
            assert time.monotonic() < deadline, "the worker's Slurm job did not end"
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
