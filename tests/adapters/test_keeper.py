"""Serve's keeper (``adapters.spawner`` with ``keep``): it starts each local step, claims
its attempt, outlives the engine that asked for it, and records how the step ended in the
claim, where a restarted engine's ``LocalAdapter.lookup`` finds it. Real processes: the
"engine" is a child Python process that is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from adapters.base import JobHandle, JobOutcome, JobRequest, JobResult, SubmitError
from adapters.local import LocalAdapter
from engine.spec.graph import StepInstance

ROOT = Path(__file__).resolve().parents[2]

# A stand-in engine: submits one step through an adoptable LocalAdapter, says the pid,
# then waits to be killed.
ENGINE = r"""
import sys, anyio
from adapters.base import JobRequest
from adapters.local import LocalAdapter
from engine.spec.graph import StepInstance
async def main():
    step = StepInstance(name="s", step="s", description="", workspace=sys.argv[1], cmd=sys.argv[2])
    adapter = LocalAdapter(shell="/bin/sh", adoptable=True)
    handle = await adapter.submit(JobRequest(step=step, attempt=1, key="study/s/1"))
    print(handle.job_id, flush=True)
    await anyio.sleep(3600)
anyio.run(main)
"""


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def _step(ws: Path, cmd: str) -> StepInstance:
    return StepInstance(name="s", step="s", description="", workspace=str(ws), cmd=cmd)


def _request(ws: Path, cmd: str, attempt: int = 1) -> JobRequest:
    return JobRequest(step=_step(ws, cmd), attempt=attempt, key=f"study/s/{attempt}")


def _engine_started_then_killed(ws: Path, cmd: str) -> int:
    """Run the stand-in engine until its step started, SIGKILL it; the step's pid."""
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(ws), cmd], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    return pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_step_outlives_its_killed_engine_and_is_adopted_with_its_exit(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "s"
    cmd = f"while [ ! -e {tmp_path}/go ]; do sleep 0.02; done; exit 4"
    pid = _engine_started_then_killed(ws, cmd)
    assert _alive(pid), "the step dies with its engine"
    claim = ws / ".troupe.1.pid"
    keeper = int(claim.read_text().split()[1])
    adapter = LocalAdapter(shell="/bin/sh", adoptable=True)
    handle = await adapter.lookup(_request(ws, cmd))
    assert isinstance(handle, JobHandle) and str(pid) == handle.job_id
    (tmp_path / "go").touch()
    with anyio.fail_after(20):
        result = await adapter.wait(handle)
    assert (JobOutcome.FAILED, 4) == (result.outcome, result.exit_code)
    assert "exit 4" == claim.read_text().splitlines()[-1]
    wait_until(lambda: not _alive(keeper), timeout=10, what="the keeper exits after its last step")


async def test_an_end_while_the_engine_was_away_is_read_from_the_claim(tmp_path: Path) -> None:
    ws = tmp_path / "s"
    pid = _engine_started_then_killed(ws, f"while [ ! -e {tmp_path}/go ]; do sleep 0.02; done")
    claim = ws / ".troupe.1.pid"
    (tmp_path / "go").touch()
    wait_until(lambda: claim.read_text().endswith("exit 0\n"), timeout=10,
               what="the keeper records the end of the step of a dead engine")
    assert not _alive(pid)
    found = await LocalAdapter(shell="/bin/sh", adoptable=True).lookup(_request(ws, "true"))
    assert isinstance(found, JobResult)
    assert (JobOutcome.COMPLETED, 0) == (found.outcome, found.exit_code)


async def test_an_attempt_never_claimed_is_fenced_off_and_never_starts(tmp_path: Path) -> None:
    ws = tmp_path / "s"
    ws.mkdir()
    adapter = LocalAdapter(shell="/bin/sh", adoptable=True)
    assert await adapter.lookup(_request(ws, f"touch {tmp_path}/ran")) is None
    assert "superseded\n" == (ws / ".troupe.1.pid").read_text()
    try:
        with pytest.raises(SubmitError, match="claimed"):
            await adapter.submit(_request(ws, f"touch {tmp_path}/ran"))
        assert not (tmp_path / "ran").exists()
        # The next attempt runs.
        handle = await adapter.submit(_request(ws, f"touch {tmp_path}/ran", attempt=2))
        assert JobOutcome.COMPLETED == (await adapter.wait(handle)).outcome
        assert (tmp_path / "ran").exists()
    finally:
        await adapter.cleanup()


async def test_a_killed_keeper_loses_its_attempts_and_leaves_none_running(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "s"
    adapter = LocalAdapter(shell="/bin/sh", adoptable=True)
    try:
        handle = await adapter.submit(_request(ws, "sleep 60"))
        keeper = int((ws / ".troupe.1.pid").read_text().split()[1])
        os.kill(keeper, signal.SIGKILL)
        with anyio.fail_after(20):
            result = await adapter.wait(handle)
        assert JobOutcome.LOST == result.outcome
        wait_until(lambda: not _alive(int(handle.job_id)), timeout=10,
                   what="the lost attempt's process is killed")
        # A new keeper takes the next start.
        again = await adapter.submit(_request(ws, "exit 0", attempt=2))
        assert JobOutcome.COMPLETED == (await adapter.wait(again)).outcome
    finally:
        await adapter.cleanup()


async def test_a_claim_naming_someone_elses_process_is_not_adopted(tmp_path: Path) -> None:
    ws = tmp_path / "s"
    ws.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - alive, not the attempt's
    try:
        (ws / ".troupe.1.pid").write_text(f"{other.pid} 999999999\n")
        start = time.monotonic()
        found = await LocalAdapter(shell="/bin/sh", adoptable=True).lookup(
            _request(ws, "true"))
        assert found is None, "a pid that is not the attempt's: lost, never adopted"
        assert time.monotonic() - start < 5
        assert other.poll() is None, "and it is not killed"
    finally:
        other.kill()
        other.wait()
