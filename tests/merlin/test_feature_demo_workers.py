"""Merlin's feature_demo.yaml, unmodified, on workers: ``enginectl run SPEC --executor
workers`` queues every step on its ``task_queue`` (as ``merlin run`` sends them to the
broker), and ``enginectl run-workers SPEC --study DIR`` starts the worker its
``merlin.resources.workers`` block names (``$(WORKER_NAME)``, concurrency 3). The study
must write what the same spec writes run locally (``layout``), every step instance must
have run on that worker, and the worker must stop when the run ends."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ENGINECTL, PEER_SPECS, wait_for_path
from tests.merlin.conftest import _path_with_standins, _stage, layout, run_troupe
from tests.merlin.standins import FEATURE_DEMO

SPEC = PEER_SPECS / "merlin" / "feature_demo.yaml"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SPEC.is_file(), reason=f"no Merlin peer specs at {SPEC.parent}"),
]


def test_feature_demo_runs_on_the_workers_run_workers_starts(tmp_path: Path) -> None:
    local = tmp_path / "local"
    done = run_troupe(SPEC, local, standins=FEATURE_DEMO)
    assert 0 == done.returncode, done.stderr[-3000:]

    where = tmp_path / "queued-spec"
    copy = _stage(SPEC, where, FEATURE_DEMO)
    env = {"PATH": _path_with_standins(where)}
    study = tmp_path / "queued"
    run = subprocess.Popen([*ENGINECTL, "run", str(copy), "-o", str(study), "--executor",
                            "workers"], cwd=where, env={**_environ(), **env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_path(study / "meta" / "worker.json", timeout=60)
        started = subprocess.run(
            [*ENGINECTL, "run-workers", str(copy), "--study", str(study), "--log-dir",
             str(tmp_path)], cwd=where, env={**_environ(), **env}, capture_output=True,
            text=True, timeout=60)
        assert 0 == started.returncode, started.stderr
        [pid] = map(int, re.findall(r"started worker demo_worker \(pid (\d+)\)", started.stdout))
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert 0 == run.returncode, err[-3000:]
    assert layout(local, specroot=tmp_path / "local-spec") == \
        layout(study, specroot=where)  # the same study as run locally

    log = tmp_path / "demo_worker.worker.log"
    deadline = time.monotonic() + 60  # the run told its worker to stop as it ended
    while Path(f"/proc/{pid}").exists() and b"zombie" not in _state(pid):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    assert "troupe worker demo_worker stopped" in log.read_text(), log.read_text()[-3000:]
    # Every step instance and sample ran under a worker's claiming wrapper (a local run
    # starts its scripts directly, without the claim).
    scripts = {p.parent for p in study.rglob("*.sh") if p.parent != study / "merlin_info"}
    claimed = {p.parent for p in study.rglob(".troupe.1.pid")}
    assert len(scripts) > 10 and scripts == claimed
    assert [] == list(local.rglob(".troupe.*.pid"))


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"
