"""The helper that starts ``run``'s local processes (adapters.spawner), and the local
adapter through it: real processes, no mocks."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from adapters.base import JobOutcome, JobRequest, SubmitError
from adapters.local import LocalAdapter
from adapters.spawner import PID, Spawner
from engine.spec.graph import StepInstance


def script(path: Path, body: str) -> tuple[str, str]:
    return str(path), f"#!/bin/sh\n\n{body}\n"


async def test_many_starts_report_each_pid_and_exit_code(tmp_path: Path) -> None:
    spawner = Spawner(dict(os.environ))
    results: dict[int, int | None] = {}

    async def one(i: int) -> None:
        ws = tmp_path / f"w{i}"
        path, text = script(ws / "s.sh", f"echo $$ > pid.txt; exit {i % 4}")
        pid, start = await spawner.start([path], cwd=str(ws), out=str(ws / f"s.{PID}.out"),
                                         err=str(ws / "s.err"), append=False, env={"X": "1"},
                                         scripts=[(path, text)])
        results[i] = await spawner.wait(start)
        assert str(pid) == (ws / "pid.txt").read_text().strip()  # a session leader: $$
        assert (ws / f"s.{pid}.out").exists()  # named after its pid, as Maestro does

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    finally:
        spawner.close()
    assert {i: i % 4 for i in range(40)} == results


async def test_a_process_killed_by_a_signal_reports_it_negative(tmp_path: Path) -> None:
    spawner = Spawner(dict(os.environ))
    try:
        path, text = script(tmp_path / "k.sh", "kill -9 $$")
        _, start = await spawner.start([path], cwd=str(tmp_path), out=str(tmp_path / "o"),
                                       err=str(tmp_path / "e"), append=False, env={},
                                       scripts=[(path, text)])
        assert -9 == await spawner.wait(start)
    finally:
        spawner.close()


async def test_a_missing_interpreter_fails_the_start_not_the_helper(tmp_path: Path) -> None:
    spawner = Spawner(dict(os.environ))
    try:
        bad = (str(tmp_path / "bad.sh"), "#!/no/such/shell\n\ntrue\n")
        with pytest.raises(OSError, match="No such file"):
            await spawner.start([bad[0]], cwd=str(tmp_path), out=str(tmp_path / "o"),
                                err=str(tmp_path / "e"), append=False, env={}, scripts=[bad])
        good = script(tmp_path / "good.sh", "exit 0")
        _, start = await spawner.start([good[0]], cwd=str(tmp_path), out=str(tmp_path / "o"),
                                       err=str(tmp_path / "e"), append=False, env={},
                                       scripts=[good])
        assert 0 == await spawner.wait(start)  # the helper goes on
    finally:
        spawner.close()


async def test_the_run_adapter_starts_samples_through_the_helper(tmp_path: Path) -> None:
    """``bulk`` requests (samples) go through the helper, each in its own directory."""
    adapter = LocalAdapter(adoptable=False, merlin=True)
    results = []
    for i in range(3):
        step = StepInstance(name="s_P.1", step="s", description="d", cmd="echo $PPID",
                            workspace=str(tmp_path / "s" / f"{i:02d}"))
        handle = await adapter.submit(JobRequest(step=step, attempt=1, key=f"k/s#{i}/1",
                                                 name=f"s\x1f{i}", bulk=True))
        results.append((await adapter.wait(handle)).outcome)
    helper = adapter._spawner
    await adapter.cleanup()
    assert helper is not None  # it was used
    assert [JobOutcome.COMPLETED] * 3 == results
    assert (tmp_path / "s" / "02" / "s_P.1.out").read_text().strip().isdigit()


async def test_the_run_adapter_turns_a_bad_shebang_into_a_submit_error(tmp_path: Path) -> None:
    adapter = LocalAdapter(shell="/no/such/shell", adoptable=False)
    step = StepInstance(name="s", step="s", description="d", workspace=str(tmp_path / "s"),
                        cmd="true")
    with pytest.raises(SubmitError, match="No such file"):
        await adapter.submit(JobRequest(step=step, attempt=1, key="k/s/1", bulk=True))
    ok = LocalAdapter(adoptable=False, merlin=True)
    handle = await ok.submit(JobRequest(step=step, attempt=1, key="k/s/1", bulk=True))
    result = await ok.wait(handle)
    await ok.cleanup()
    await adapter.cleanup()
    assert JobOutcome.COMPLETED == result.outcome
    assert {"s.sh", "s.out", "s.err"} <= set(os.listdir(tmp_path / "s"))  # Merlin's names


class _Sink:
    """Records what the spawner says about one queued start."""

    def __init__(self, log: list[tuple[str, int, int | None, str]], i: int) -> None:
        self.log, self.i = log, i

    def on_start(self, pid: int) -> None:
        self.log.append(("start", self.i, pid, ""))

    def on_end(self, code: int | None, error: str) -> None:
        self.log.append(("end", self.i, code, error))


async def test_a_group_runs_at_most_its_limit_and_dropped_starts_never_run(
        tmp_path: Path) -> None:
    spawner = Spawner(dict(os.environ))
    log: list[tuple[str, int, int | None, str]] = []
    gate = tmp_path / "gate"
    ids = []
    try:
        for i in range(6):
            ws = tmp_path / f"w{i}"
            path, text = script(ws / "s.sh", f"touch ran; while [ ! -e {gate} ]; do sleep 0.01; done")
            ids.append(spawner.queue([path], cwd=str(ws), out=str(ws / "o"), err=str(ws / "e"),
                          append=False, env={}, sink=_Sink(log, i), scripts=[(path, text)],
                          group="g", limit=2))
        with anyio.fail_after(10):
            while sum(1 for e in log if e[0] == "start") < 2:
                await anyio.sleep(0.01)
        assert [0, 1] == [e[1] for e in log if e[0] == "start"]  # in order, two at once
        spawner.drop([ids[2], ids[3]])  # waiting: never started
        with anyio.fail_after(10):
            while sum(1 for e in log if e[0] == "end") < 2:
                await anyio.sleep(0.01)
        assert {("end", 2, None, ""), ("end", 3, None, "")} <= set(log)  # dropped
        gate.touch()
        with anyio.fail_after(20):
            while sum(1 for e in log if e[0] == "end") < 6:
                await anyio.sleep(0.01)
    finally:
        spawner.close()
    ran = sorted(i for i in range(6) if (tmp_path / f"w{i}" / "ran").exists())
    assert [0, 1, 4, 5] == ran
    assert {0, 1, 4, 5} == {e[1] for e in log if e[0] == "end" and e[2] == 0}


async def test_starts_larger_than_the_pipe_are_all_sent_without_blocking_the_engine(
    tmp_path: Path,
) -> None:
    spawner = Spawner(dict(os.environ))
    pad = "# " + "x" * 4000  # 300 starts of 4 kB: many times what a pipe holds
    sinks: list[_EndSink] = []
    try:
        for i in range(300):
            ws = tmp_path / f"w{i}"
            path, text = script(ws / "s.sh", f"{pad}\nexit {i % 3}")
            sinks.append(_EndSink())
            spawner.queue([path], cwd=str(ws), out=str(ws / "o"), err=str(ws / "e"),
                          append=False, env={}, sink=sinks[-1], scripts=[(path, text)])
        await anyio.sleep(0)  # the batch is sent: what the pipe did not take waits
        assert len(spawner._out) > 100_000, "the engine waited for the helper to read"
        with anyio.fail_after(60):
            for sink in sinks:
                await sink.done.wait()
        assert not spawner._out
    finally:
        spawner.close()
    assert [i % 3 for i in range(300)] == [s.code for s in sinks]


class _EndSink:
    def __init__(self) -> None:
        self.done, self.code = anyio.Event(), None

    def on_start(self, pid: int) -> None:
        pass

    def on_end(self, code: int | None, error: str) -> None:
        self.code = code
        self.done.set()

