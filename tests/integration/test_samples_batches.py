"""A sampled step's samples in batches under ``enginectl run`` (``adapters.batches``):
the helper keeps at most the throttle running, a sample that fails is retried alone
through its own record, ``--strict`` refuses them, and a cancelled run leaves no
sample's process behind. Real processes, an embedded nats-server."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from engine.status import read_status
from tests.conftest import ENGINECTL, alive, enginectl

SPEC = """
description: {{name: batches, description: samples in batches}}
study:
  - name: sim
    description: one sample
    run:
      cmd: |
{cmd}
      retry_delay: 0
  - name: collect
    description: after all of them
    run:
      cmd: ls $(sim.workspace)/$(MERLIN_GLOB_PATH)done.txt | wc -l > count.txt
      depends: [sim]
merlin:
  samples: {{file: samples.npy, column_labels: [X], level_max_dirs: 10}}
"""


def spec(tmp_path: Path, n: int, cmd: str) -> tuple[Path, Path]:
    path = tmp_path / "spec.yaml"
    # (the first line makes it a sampled step: its command names a column)
    lines = ["echo $(X) > x.txt", *cmd.strip().splitlines()]
    body = "\n".join(f"        {line}" for line in lines)
    path.write_text(SPEC.format(cmd=body))
    np.save(tmp_path / "samples.npy", np.arange(n).reshape(n, 1))
    return path, tmp_path / "samples.npy"


def rows(study: Path) -> dict[tuple[str, str], str]:
    return {(r["Step Name"], r["State"]): r["Job ID"] for r in read_status(study / "status.csv")}


def test_no_more_samples_run_at_once_than_the_throttle(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    # Each sample is in `live` from its first line to its last: the count it sees is how
    # many run with it, itself included.
    path, samples = spec(tmp_path, 30, f"""
touch {live}/$$
ls {live} | wc -l >> {tmp_path}/counts
sleep 0.05
rm {live}/$$
touch done.txt""")
    study = tmp_path / "study"
    result = enginectl("run", str(path), "-o", str(study), "--samplesfile", str(samples),
                       "-t", "3")
    assert 0 == result.returncode, result.stderr
    counts = [int(x) for x in (tmp_path / "counts").read_text().split()]
    assert 30 == len(counts)
    assert max(counts) <= 3, counts
    assert "30\n" == (study / "collect" / "count.txt").read_text()


def test_a_failed_sample_is_retried_alone_and_the_others_run_once(tmp_path: Path) -> None:
    # Odd samples fail their first attempt with Merlin's retry code, then succeed.
    path, samples = spec(tmp_path, 12, """
echo run >> runs.txt
if [ $(( $(X) % 2 )) = 1 ] && [ ! -e tried ]; then touch tried; exit $(MERLIN_RETRY); fi
touch done.txt""")
    study = tmp_path / "study"
    result = enginectl("run", str(path), "-o", str(study), "--samplesfile", str(samples))
    assert 0 == result.returncode, result.stderr
    for i in range(12):
        ws = study / "sim" / f"{i // 10:02d}" / f"{i % 10:02d}"
        assert (2 if i % 2 else 1) == len((ws / "runs.txt").read_text().split()), i
        assert (ws / "MERLIN_FINISHED").exists()
    assert [("sim", "FINISHED")] == [k for k in rows(study) if k[0] == "sim"]
    assert "12 samples" == rows(study)[("sim", "FINISHED")]
    assert "12\n" == (study / "collect" / "count.txt").read_text()


def test_strict_refuses_a_sampled_step_with_an_unresolved_token_before_it_runs(
        tmp_path: Path) -> None:
    path, samples = spec(tmp_path, 5, "echo $(NOT_A_TOKEN) > done.txt")
    study = tmp_path / "study"
    result = enginectl("run", str(path), "-o", str(study), "--samplesfile", str(samples),
                       "--strict")
    assert 1 == result.returncode
    assert "NOT_A_TOKEN" in result.stderr and "Traceback" not in result.stderr
    assert not study.exists() or not list(study.rglob("done.txt"))


def test_a_cancelled_run_leaves_no_sample_running(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    path, samples = spec(tmp_path, 40, f"""
sleep 300 &
echo $! > {pids}/$$.child
echo $$ > {pids}/$$.self
wait""")
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(path), "-o", str(study), "--samplesfile",
                             str(samples), "-t", "4", "--kill-grace", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.glob("*.self"))) < 4:  # four samples run (the throttle)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 == proc.returncode, err
    started = [int(p.read_text()) for p in pids.iterdir() if p.read_text().strip()]
    assert len(started) >= 8
    assert not [pid for pid in started if alive(pid)]
    assert {("sim", "CANCELLED"): "40 samples", ("collect", "CANCELLED"): "--"} == rows(study)
