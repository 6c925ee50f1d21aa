"""``troupe.executor: workers``: steps become JetStream tasks that ``enginectl worker``
processes take from their queues. Real nats-server, real worker processes, each with its
own working directory and environment (the only channels to the engine are NATS and the
study directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine.status import read_status
from engine.workqueue import ANCHOR
from tests.conftest import ENGINECTL, alive, enginectl, wait_for_path
from tests.ledger import ledger_cmd, max_overlap, read_ledger
from tests.workerpool import Workers


def spec_text(queues: dict[str, int], ledger: Path, extra: str = "",
              timing: Path | None = None) -> str:
    steps = []
    for queue, n in queues.items():
        for i in range(n):
            lines = [f'echo "$TROUPE_STEP {queue} $WORKER_ID" >> {ledger}{extra}']
            if timing is not None:  # start and end times, for the overlap
                lines += ledger_cmd(timing, "true").splitlines()
            body = "".join(f"        {line}\n" for line in lines)
            steps.append(
                f"  - name: {queue}{i}\n    description: on {queue}\n    run:\n"
                f"      queue: {queue}\n      cmd: |\n{body}")
    return ("description: {name: workers, description: steps on worker queues}\n"
            "troupe: {executor: workers}\nstudy:\n" + "".join(steps))


@pytest.fixture
def workers(nats_server: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(nats_server, tmp_path / "workers")
    try:
        yield pool
    finally:
        pool.stop()


def test_each_queue_runs_its_steps_on_its_own_workers_within_the_throttle(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    ledger, timing = tmp_path / "ledger", tmp_path / "timing"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"cpu": 140, "gpu": 60}, ledger, timing=timing))
    workers.start("w1", "cpu", concurrency=2)
    workers.start("w2", "cpu", concurrency=2)
    workers.start("w3", "gpu,other", concurrency=2)
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), "--nats-url", nats_server, "-t", "4")
    assert 0 == result.returncode, result.stderr
    assert {"FINISHED"} == {r["State"] for r in read_status(study / "status.csv")}
    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert 200 == len(lines) == len({step for step, _, _ in lines})  # each step ran once
    assert {w for _, q, w in lines if q == "cpu"} == {"w1", "w2"}
    assert {w for _, q, w in lines if q == "gpu"} == {"w3"}
    assert max_overlap(read_ledger(timing)) <= 4  # the study's throttle held on the workers
    assert {"w1": 0, "w2": 0, "w3": 0} == workers.stop()  # SIGTERM: a clean stop
    # Every task was taken and acknowledged; the stream keeps only its anchor (never
    # empty, so no block file is deleted and made again per task), and only one.
    assert [(1, ANCHOR), (1, ANCHOR)] == anyio.run(_tasks_left, nats_server)


def test_a_worker_runs_no_more_tasks_at_once_than_its_concurrency(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    """Without a study throttle every task waits in the queue at once: a worker of
    concurrency 1 must not pull the next one before the one it took has ended."""
    ledger, timing = tmp_path / "ledger", tmp_path / "timing"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"solo": 30}, ledger, timing=timing))
    workers.start("w1", "solo", concurrency=1)
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), "--nats-url", nats_server, "-t", "0")
    assert 0 == result.returncode, result.stderr
    assert 30 == len(ledger.read_text().splitlines())
    assert 1 == max_overlap(read_ledger(timing))


async def _tasks_left(url: str) -> list[tuple[int, str]]:
    """How many messages the tasks stream holds and the subject of its first, before and
    after one more anchor is put."""
    from engine.bus import open_bus
    from engine.workqueue import TASKS_STREAM, anchor_task_stream

    seen = []
    async with open_bus(url) as bus:
        for _ in range(2):
            info = await bus.jetstream.stream_info(TASKS_STREAM)
            first = await bus.jetstream.get_msg(TASKS_STREAM, info.state.first_seq)
            seen.append((info.state.messages, first.subject))
            await anchor_task_stream(bus)  # a second one is refused
    return seen


def test_a_failed_step_fails_and_a_task_cancelled_in_its_queue_never_runs(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    text = spec_text({"cpu": 1, "later": 1}, ledger, extra="; exit 4")
    spec.write_text(text)
    workers.start("w1", "cpu")
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study), "--nats-url",
                             nats_server], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_path(ledger)  # cpu0 ran; later0 waits in a queue no worker serves
        deadline = time.monotonic() + 30
        while not any(r["Step Name"] == "cpu0" and r["State"] == "FAILED"
                      for r in read_status(study / "status.csv")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 2 == proc.returncode, err  # a failed step outranks the cancel: FAILURE
    states = {r["Step Name"]: r["State"] for r in read_status(study / "status.csv")}
    assert {"cpu0": "FAILED", "later0": "CANCELLED"} == states
    workers.start("w2", "later")  # it now takes the cancelled task, and must not run it
    deadline = time.monotonic() + 30
    while b"task_ended" not in (tmp_path / "workers" / "w2" / "worker.log").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ["cpu0"] == [line.split()[0] for line in ledger.read_text().splitlines()]


def test_workers_of_a_serve_engine_connect_with_its_worker_credentials(
        workers: Workers, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"cpu": 4}, ledger))
    assert 0o600 == (engine.state / "worker.json").stat().st_mode & 0o777
    workers.start("w1", "cpu", where=("--state-dir", str(engine.state)))
    result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--wait")
    assert 0 == result.returncode, result.stderr
    assert {"w1"} == {line.split()[2] for line in ledger.read_text().splitlines()}
    listed = engine.ctl("db", "list", "worker", "--json")  # the engine keeps its heartbeats
    assert 0 == listed.returncode, listed.stderr
    [w1] = [w for w in json.loads(listed.stdout) if w["kind"] == "worker"]
    assert ("w1", ["cpu"], 1) == (w1["worker"], w1["queues"], w1["concurrency"])
    # The worker's user takes tasks and reports, and can do nothing else: no API request.
    cfg = json.loads((engine.state / "worker.json").read_text())
    secret = tmp_path / "worker.pw"
    secret.write_text(cfg["password"])
    refused = subprocess.run(
        [*ENGINECTL, "list", "--nats-url", cfg["url"], "--user", "worker", "--password-file",
         str(secret)], capture_output=True, text=True, timeout=30, check=False)
    assert 1 == refused.returncode and "error: " in refused.stderr


def test_workers_of_a_run_study_connect_through_its_directory(
        workers: Workers, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"cpu": 3}, ledger))
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_path(study / "meta" / "worker.json")
        workers.start("w1", "cpu", where=("--study", str(study)))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 == proc.returncode, err
    assert 3 == len(ledger.read_text().splitlines())


LOSS = """
description: {{name: loss, description: a worker dies with its task}}
troupe: {{executor: workers, worker_timeout: 3}}
study:
  - name: long
    description: the first attempt hangs until its host dies
    run:
      queue: cpu
      cmd: |
        echo "$TROUPE_ATTEMPT $WORKER_ID" >> {ledger}
        if [ "$TROUPE_ATTEMPT" = 1 ]; then echo $$ > {tmp}/a1; mv {tmp}/a1 {tmp}/attempt1.pid; sleep 300; fi
        echo done > done.txt
"""


def test_a_task_whose_worker_died_is_run_again_as_a_new_attempt(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    spec = tmp_path / "spec.yaml"
    spec.write_text(LOSS.format(ledger=ledger, tmp=tmp_path))
    workers.start("w1", "cpu")
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study), "--nats-url",
                             nats_server], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_path(tmp_path / "attempt1.pid")
        # SIGKILL to the worker alone: its task (in a session of its own) dies with it,
        # so the attempt the engine finds lost is not still running when it runs again.
        pid = int((tmp_path / "attempt1.pid").read_text())
        workers.procs["w1"].kill()
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, "the task outlived its worker"
            time.sleep(0.02)
        workers.start("w2", "cpu")
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 == proc.returncode, err
    assert "done\n" == (study / "long" / "done.txt").read_text()
    assert [["1", "w1"], ["2", "w2"]] == [line.split() for line in ledger.read_text().splitlines()]


def test_a_queue_no_worker_serves_is_a_warning(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"nobody": 1}, tmp_path / "ledger").replace(
        "troupe: {executor: workers}", "troupe: {executor: workers, worker_timeout: 2}"))
    workers.start("w1", "cpu")  # alive, but for another queue
    err_file = tmp_path / "err"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(tmp_path / "s"),
                                 "--nats-url", nats_server], stderr=err)
    try:
        deadline = time.monotonic() + 30
        while "no live worker serves queue 'nobody'" not in err_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert 3 == proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


QUEUED = """
description: {{name: queued, description: a task waits for its worker}}
troupe: {{executor: workers, worker_timeout: 2}}
study:
  - name: q
    description: walltime 1 s, longer than it waits in its queue
    run: {{cmd: 'echo "$TROUPE_WORKER" > {ledger}', queue: late, walltime: "00:00:01"}}
"""


def test_a_task_in_its_queue_is_pending_and_its_walltime_starts_on_a_worker(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(QUEUED.format(ledger=tmp_path / "ledger"))
    err_file, study = tmp_path / "err", tmp_path / "study"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study),
                                 "--nats-url", nats_server], stderr=err)
    try:
        deadline = time.monotonic() + 30  # the warning comes 2 s after the task was queued
        while "no live worker serves queue 'late'" not in err_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()
            time.sleep(0.05)
        assert ["PENDING"] == [r["State"] for r in read_status(study / "status.csv")]
        workers.start("w1", "late")
        assert 0 == proc.wait(timeout=60), err_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ["FINISHED"] == [r["State"] for r in read_status(study / "status.csv")]
    assert "w1\n" == (tmp_path / "ledger").read_text()


ADOPT = """
description: {{name: adopt, description: the engine dies while a worker runs one task and another waits}}
troupe: {{executor: workers, worker_timeout: 5}}
study:
  - name: long
    description: runs on its worker across the engine's death
    run:
      queue: cpu
      cmd: |
{long}
  - name: queued
    description: waits in a queue nobody serves until after the restart
    run:
      queue: late
      cmd: |
{queued}
"""


def test_a_restarted_engine_adopts_running_tasks_and_fences_queued_ones(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    """SIGKILL to a serve engine: the restarted one adopts the task a worker runs (it runs
    once, its end is applied), and fences off the attempt still queued (the worker that
    takes that task later runs nothing; the step runs once, as its next attempt)."""
    from tests.engine_proc import Engine

    ledger = tmp_path / "ledger"
    indent = lambda text: "".join(f"        {line}\n" for line in text.splitlines())  # noqa: E731
    spec = tmp_path / "spec.yaml"
    spec.write_text(ADOPT.format(
        long=indent(ledger_cmd(ledger, f"touch {tmp_path}/long.started; sleep 3")),
        queued=indent(ledger_cmd(ledger, "true"))))
    engine = Engine(tmp_path / "state", "--nats-url", nats_server, "--drain-timeout", "5").start()
    try:
        workers.start("w1", "cpu")
        submitted = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"))
        assert 0 == submitted.returncode, submitted.stderr
        study_id = submitted.stdout.strip()
        wait_for_path(tmp_path / "long.started")
        deadline = time.monotonic() + 30
        while {s["step"]: s["state"] for s in engine.status(study_id)["steps"]}.get(
                "queued") != "PENDING":
            assert time.monotonic() < deadline, "queued never reached its queue"
            time.sleep(0.05)
        engine.kill()
        engine.start()
        workers.start("w2", "late")
        watched = engine.ctl("watch", study_id, timeout=120)
        assert 0 == watched.returncode, watched.stderr
    finally:
        engine.stop()
    runs = {}
    for e in read_ledger(ledger):
        runs.setdefault(e.step, {})[e.attempt] = e
    assert {1} == set(runs["long"]) and 0 == runs["long"][1].exit, runs["long"]  # adopted
    assert {2} == set(runs["queued"]) and 0 == runs["queued"][2].exit, runs["queued"]
    assert "cancelled\n" == (tmp_path / "study" / "queued" / ".troupe.1.pid").read_text()


async def test_a_task_that_runs_on_says_so_and_a_short_one_only_reports(
        workers: Workers, nats_server: str, tmp_path: Path) -> None:
    """A worker tells the engine that a task runs only once it has run for
    ``SAY_RUNNING_AFTER`` (the engine then marks it RUNNING and counts its heartbeats); a
    task that ended sooner is told by its report alone: one message fewer per short task."""
    from engine.bus import open_bus
    from engine.messages import ENCODER, JobReported, Task, TasksAlive, new_event_id
    from engine.workqueue import ensure_task_stream, publish_task
    from engine.worker import SAY_RUNNING_AFTER

    workers.start("w1", "default", heartbeat=60)  # no periodic beat during the test
    heard: list[tuple[str, str]] = []
    async with open_bus(nats_server) as bus:
        await ensure_task_stream(bus)
        async with bus.subscribe("troupe.v1.jobs.t") as reports:
            for name, cmd in [("short", "true"), ("long", f"sleep {SAY_RUNNING_AFTER * 6}")]:
                ws = tmp_path / name
                ws.mkdir()
                (ws / f"{name}.sh").write_text(f"#!/bin/sh\n{cmd}\n")
                (ws / f"{name}.sh").chmod(0o755)
                task = Task(event_id=new_event_id(), study_id="t", step=name, attempt=1,
                            key=f"t/{name}/1", queue="default", workspace=str(ws),
                            script=str(ws / f"{name}.sh"), stem=name,
                            exit_file=str(ws / ".troupe.1.exit"),
                            report_subject="troupe.v1.jobs.t")
                await publish_task(bus, "default", ENCODER.encode(task), key=task.key)
                async for msg in reports:
                    if isinstance(msg, TasksAlive) and task.key in msg.keys:
                        heard.append((name, "runs"))
                    elif isinstance(msg, JobReported) and msg.exit_file == task.exit_file:
                        heard.append((name, f"exit {msg.exit_code}"))
                        break
    assert [("short", "exit 0"), ("long", "runs"), ("long", "exit 0")] == heard
