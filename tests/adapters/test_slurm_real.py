"""SlurmAdapter against a real single-node Slurm (``bash tests/slurm/slurm-up.sh`` first).

Skipped unless ``sinfo`` answers. A TIMEOUT takes 60–90 s on Slurm (whole-minute limits,
checked every ~30 s), so every case runs concurrently with it in one task group.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapters.base import JobHandle, JobOutcome, JobResult
from adapters.slurm import SlurmAdapter
from adapters.slurm_parse import key_from_comment
from adapters.slurm_script import is_scheduled
from engine.spec import load_study
from tests.adapters.support import make_step, request
from tests.conftest import PEER_SPECS, needs_peer_specs


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not _slurm_answers(), reason="no Slurm here (tests/slurm/slurm-up.sh)"),
]


def _adapter(batch: dict[str, Any] | None = None) -> SlurmAdapter:
    return SlurmAdapter(batch or {"queue": "debug"}, reconcile_interval=1.0, lost_after=60.0)


async def _slurm(*args: str) -> str:
    proc = await anyio.run_process(list(args), check=True)
    return proc.stdout.decode()


async def _sacct_row(job_id: str, *, comment: bool = False) -> list[str]:
    """sacct's final State|ExitCode|Comment row of a job (waits for it: ~0.1 s after the
    end; with ``comment``, also for the comment, which slurmdbd may store a moment after
    the state when the controller is busy)."""
    with anyio.fail_after(30):
        while True:
            out = await _slurm("sacct", "-X", "-P", "-n", "-j", job_id, "-o", "State,ExitCode,Comment")
            row = out.strip().split("|", 2) if out.strip() else []
            if row and row[0].split()[0] not in ("PENDING", "RUNNING", "COMPLETING") and (
                    not comment or row[2].strip()):
                return row
            await anyio.sleep(0.2)


async def _until_running(job_id: str) -> None:
    with anyio.fail_after(60):
        while (await _slurm("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T")).strip() != "RUNNING":
            await anyio.sleep(0.1)


async def _run(a: SlurmAdapter, step: Any, **kw: Any) -> tuple[JobHandle, JobResult]:
    handle = await a.submit(request(step, **kw))
    with anyio.fail_after(150):
        return handle, await a.wait(handle)


@needs_peer_specs
async def test_jobs_on_real_slurm(tmp_path: Path) -> None:
    """Success, exit 3, scancel, re-adoption, a whole study and TIMEOUT-then-restart."""
    a = _adapter()
    root = tmp_path / "study"
    checks: dict[str, Any] = {}

    async def timeout_then_restart() -> None:
        s = make_step(root, "too slow", "sleep 600\n", restart="echo resumed > resumed.txt\n",
                      procs=1, walltime="0:01")  # fmt: skip
        handle, result = await _run(a, s)
        checks["timeout"] = (result.outcome, (await _sacct_row(handle.job_id))[0])
        _, again = await _run(a, s, attempt=2, restart=True)
        checks["restart"] = (again.outcome, (Path(s.workspace) / "resumed.txt").read_text())

    async def trivial() -> None:
        s = make_step(root, "hello world", "$(LAUNCHER) echo hello from $SLURM_JOB_ID\n",
                      description="Say\nhello", procs=1)  # fmt: skip
        handle, result = await _run(a, s)
        row = await _sacct_row(handle.job_id, comment=True)
        out = (Path(s.workspace) / "hello_world.out").read_text()
        checks["trivial"] = (result.outcome, result.exit_code, row[0],
                             key_from_comment(row[2]), out)

    async def exit3() -> None:
        s = make_step(root, "fails", "$(LAUNCHER) true\nexit 3\n", procs=1)
        handle, result = await _run(a, s)
        checks["exit3"] = (result.outcome, result.exit_code, await _sacct_row(handle.job_id))

    async def cancelled() -> None:
        s = make_step(root, "cancelled", "sleep 600\n", procs=1)
        handle = await a.submit(request(s))
        await _until_running(handle.job_id)
        await a.cancel(handle)
        with anyio.fail_after(30):
            result = await a.wait(handle)
        checks["cancel"] = (result.outcome, (await _sacct_row(handle.job_id))[0])

    async def readopted() -> None:
        s = make_step(root, "adopted", "sleep 600\n", procs=1)
        handle = await a.submit(request(s))
        await _until_running(handle.job_id)
        restarted = _adapter()  # a new engine process knows only the key
        found = await restarted.lookup(request(s))
        await restarted.cancel(handle)
        with anyio.fail_after(30):
            result = await restarted.wait(handle)
        checks["adopt"] = (found == handle, result.outcome)

    async def study() -> None:
        spec = PEER_SPECS / "maestro" / "hello_bye_parameterized_slurm.yaml"
        graph = load_study(spec, out_dir=str(tmp_path / "hello_bye"),
                           now=datetime.datetime.now(), cwd=str(tmp_path))  # fmt: skip
        batch = {**graph.batch, "queue": "debug", "bank": ""}  # the local partition
        s_adapter = _adapter(batch)
        done: dict[str, anyio.Event] = {st.name: anyio.Event() for st in graph.steps}
        outcomes: dict[str, JobOutcome] = {}

        async def one(st: Any) -> None:
            for parent in st.parents:
                await done[parent].wait()
            Path(st.workspace).mkdir(parents=True, exist_ok=True)
            _, result = await _run(s_adapter, st)
            outcomes[st.name] = result.outcome
            done[st.name].set()

        async with anyio.create_task_group() as tg:
            for st in graph.steps:
                tg.start_soon(one, st)
        hello = [st for st in graph.steps if st.step == "hello_world"]
        texts = {p.read_text() for st in hello for p in Path(st.workspace).glob("*.txt")}
        checks["study"] = (set(outcomes.values()), len(outcomes), all(map(is_scheduled, graph.steps)),
                           "Hello, Pam!\n" in texts)

    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            tg.start_soon(timeout_then_restart)  # first: it takes the longest
            for case in (trivial, exit3, cancelled, readopted, study):
                tg.start_soon(case)

    outcome, code, state, key, out = checks["trivial"]
    assert (JobOutcome.COMPLETED, 0, "COMPLETED", "study-1/hello world/1") == (outcome, code, state, key)
    assert out.startswith("hello from ")
    assert (JobOutcome.FAILED, 3, ["FAILED", "3:0"]) == checks["exit3"][:2] + (checks["exit3"][2][:2],)
    assert (JobOutcome.CANCELLED, "CANCELLED") == (checks["cancel"][0], checks["cancel"][1].split()[0])
    assert (True, JobOutcome.CANCELLED) == checks["adopt"]
    assert ({JobOutcome.COMPLETED}, 8, True, True) == checks["study"]
    assert (JobOutcome.TIMEOUT, "TIMEOUT") == checks["timeout"]
    assert (JobOutcome.COMPLETED, "resumed\n") == checks["restart"]
