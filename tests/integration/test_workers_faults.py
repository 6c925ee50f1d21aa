"""Issue 15's fault acceptance: a study of 200 steps on two queues, served by 3 worker
processes over a real 3-node NATS cluster (tests/cluster/cluster-up.sh), loses

* a worker's host (SIGKILL to the worker and to its tasks' processes) at a seeded random
  moment: the lost tasks are re-run on the other worker of their queue within the
  heartbeat timeout plus 5 s;
* one nats-server of the cluster (seeded: which one, and when), under ``serve``;

and completes: every step FINISHED, no FINISHED step ran again, no two attempts of a step
overlapped, each queue's steps ran only on its workers (an independent ledger written by
the steps themselves). ``TROUPE_SEED`` picks another seed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.status import read_status
from tests.conftest import ENGINECTL
from tests.engine_proc import Engine
from tests.ledger import Entry, ledger_cmd, read_ledger
from tests.workerpool import Workers

SEED = int(os.environ.get("TROUPE_SEED", "15"))
TIMEOUT = 5  # troupe.worker_timeout, seconds


def _spec(ledger: Path, who: Path, queues: dict[str, int]) -> str:
    steps = []
    for queue, n in queues.items():
        for i in range(n):
            body = (f'echo "$TROUPE_STEP $TROUPE_ATTEMPT $TROUPE_WORKER" >> {who}\n'
                    f"sleep 0.{1 + i % 3}")
            cmd = "".join(f"        {line}\n" for line in ledger_cmd(ledger, body).splitlines())
            steps.append(f"  - name: {queue}{i}\n    description: on {queue}\n    run:\n"
                         f"      queue: {queue}\n      cmd: |\n{cmd}")
    return ("description: {name: faults, description: 200 steps on two queues}\n"
            f"troupe: {{executor: workers, worker_timeout: {TIMEOUT}}}\nstudy:\n"
            + "".join(steps))


@pytest.fixture
def pool(cluster: tuple[str, Path], tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(cluster[0], tmp_path / "workers")
    try:
        workers.start("w1", "cpu", concurrency=2)
        workers.start("w2", "cpu", concurrency=2)
        workers.start("w3", "gpu", concurrency=2)
        yield workers
    finally:
        workers.stop()


def _ended(ledger: Path) -> int:
    try:
        return sum(1 for e in read_ledger(ledger) if e.end is not None)
    except (OSError, ValueError):  # a line being written
        return 0


def _wait_ended(ledger: Path, n: int, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 120
    while _ended(ledger) < n:
        assert proc is None or proc.poll() is None, "the study ended before the fault"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _wait_running_on(worker: str, ledger: Path, who: Path) -> None:
    """Until ``worker`` runs a step (started, not ended): a random moment when its host's
    death loses work."""
    deadline = time.monotonic() + 60
    while True:
        try:
            ended = {(e.step, e.attempt) for e in read_ledger(ledger) if e.end is not None}
            placed = [line.split() for line in who.read_text().splitlines()]
        except (OSError, ValueError):  # a line being written
            continue
        if any(w == worker and (step, int(a)) not in ended for step, a, w in placed):
            return
        assert time.monotonic() < deadline, f"{worker} ran nothing"
        time.sleep(0.005)


def _recorded(study: Path, step: str, attempt: int) -> bool:
    """Whether the worker recorded the attempt's exit status (in its claim)."""
    claim = study / step / f".troupe.{attempt}.pid"
    return any(line.startswith("exit ") for line in claim.read_text().splitlines())


def _check_runs(entries: list[Entry], who: Path, killed_at: float | None,
                killed: str | None, study: Path) -> dict[str, list[Entry]]:
    """Every step ran to exit 0 exactly once and never again after it, never overlapping
    another attempt; each queue's steps on its own workers. One exception: a run whose
    script ended on the killed worker an instant before it died, before the worker
    recorded the exit status anywhere: nobody can know it ended, so it is lost (and runs
    again) like one that did not end. Returns the lost attempts, by step."""
    by_step: dict[str, list[Entry]] = {}
    for e in entries:  # the exit line replaces the start line of the same attempt
        runs = by_step.setdefault(e.step, [])
        runs[:] = [r for r in runs if r.attempt != e.attempt] + [e]
    assert 200 == len(by_step)
    lost: dict[str, list[Entry]] = {}
    for step, runs in by_step.items():
        runs.sort(key=lambda r: r.start)
        done = [r for r in runs if r.end is not None]
        for r in done[:-1]:  # ended, yet run again: only if its exit status was never kept
            assert killed_at is not None and r.end is not None and r.end <= killed_at, (step, runs)
            assert not _recorded(study, step, r.attempt), ("re-run after a recorded end", step, runs)
        assert 0 == done[-1].exit, (step, runs)  # one FINISHED run, never again
        assert runs[-1] is done[-1], (step, runs)
        for before, after in zip(runs, runs[1:]):
            end = before.end if before.end is not None else killed_at
            assert end is not None and end <= after.start, ("overlap", step, runs)
        if len(runs) > 1:
            lost[step] = runs[:-1]
    placed = [line.split() for line in who.read_text().splitlines()]
    for step, attempt, worker in placed:
        assert worker in ({"w3"} if step.startswith("gpu") else {"w1", "w2"}), (step, worker)
        if killed is not None and any(r.attempt == int(attempt) for r in lost.get(step, [])):
            assert worker == killed, (step, attempt, worker)  # only its tasks were lost
    return lost


def test_a_worker_host_killed_at_a_random_moment_loses_nothing(
        pool: Workers, cluster: tuple[str, Path], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    # Steps go out in spec order, the 140 cpu steps first: kill while cpu work remains.
    victim, after = rng.choice(["w1", "w2"]), rng.randint(20, 110)
    ledger, who = tmp_path / "ledger", tmp_path / "who"
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec(ledger, who, {"cpu": 140, "gpu": 60}))
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study), "--nats-url",
                             cluster[0], "-t", "6"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_ended(ledger, after, proc)
        _wait_running_on(victim, ledger, who)
        pool.kill_host(victim)
        killed_at = time.time()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 == proc.returncode, f"seed {SEED}: {err[-3000:]}"
    assert {"FINISHED"} == {r["State"] for r in read_status(study / "status.csv")}
    entries = read_ledger(ledger)
    lost = _check_runs(entries, who, killed_at, victim, study)
    assert lost, f"seed {SEED}: {victim} ran nothing when its host died"
    for step, runs in lost.items():
        rerun = min(e.start for e in entries if e.step == step and e.attempt > runs[-1].attempt)
        assert rerun - killed_at <= TIMEOUT + 5, (f"seed {SEED}", step, rerun - killed_at)


def test_a_nats_server_of_the_cluster_killed_mid_study_loses_nothing(
        pool: Workers, cluster: tuple[str, Path], tmp_path: Path) -> None:
    urls, where = cluster
    rng = random.Random(SEED)
    victim, after = rng.choice(["n1", "n2", "n3"]), rng.randint(20, 150)
    ledger, who = tmp_path / "ledger", tmp_path / "who"
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec(ledger, who, {"cpu": 140, "gpu": 60}))
    engine = Engine(tmp_path / "state", "--nats-url", urls, "--drain-timeout", "5").start()
    try:
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "-t", "6")
        assert 0 == result.returncode, result.stderr
        study_id = result.stdout.strip()
        _wait_ended(ledger, after)
        os.kill(int((where / victim / "pid").read_text()), signal.SIGKILL)
        watched = engine.ctl("watch", study_id, timeout=300)
        assert 0 == watched.returncode, f"seed {SEED}: {watched.stderr[-3000:]}"
        out = engine.ctl("events", study_id)
        assert 0 == out.returncode, out.stderr
    finally:
        engine.stop()
    finals = [e["step"] for e in map(json.loads, out.stdout.splitlines())
              if e["type"] == "step_state_changed" and e.get("final")]
    assert 200 == len(finals) == len(set(finals)), "one final event per step"
    _check_runs(read_ledger(ledger), who, None, None, tmp_path / "study")
