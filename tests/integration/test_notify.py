"""A scheduler job's trailer reports its exit status over NATS (engine.notify), and the
watcher takes the report as if it had read the exit file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import nats

from adapters.base import JobOutcome
from adapters.jobwatch import JobState, JobWatcher
from engine import subjects
from engine.messages import BUS_DECODER, JobReported


async def test_notify_publishes_the_exit_status_and_the_watcher_takes_it(
    nats_server: str, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe(subjects.job_reports("s1"))
    await nc.flush()
    exit_file = tmp_path / "job.7.exit"  # never written: only the report tells
    proc = subprocess.run(
        [sys.executable, "-m", "engine.notify", nats_server, subjects.job_reports("s1"),
         str(exit_file), "0"], capture_output=True, timeout=30)
    assert 0 == proc.returncode
    msg = BUS_DECODER.decode((await sub.next_msg(timeout=10)).data)
    await nc.close()
    assert isinstance(msg, JobReported)
    assert (str(exit_file), 0) == (msg.exit_file, msg.exit_code)

    async def query(ids):  # type: ignore[no-untyped-def]
        return {i: JobState(outcome=None) for i in ids}  # the backend still says running

    watcher = JobWatcher(query, backend="test", watch_interval=3600, reconcile_interval=3600)
    result = None
    async with anyio.create_task_group() as tg:
        async def wait() -> None:
            nonlocal result
            result = await watcher.wait("7", exit_file)

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert watcher.report(msg.exit_file, msg.exit_code)
    assert result is not None and JobOutcome.COMPLETED == result.outcome


def test_notify_never_fails_the_job_when_the_server_is_unreachable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.notify", "nats://127.0.0.1:1", "x", str(tmp_path / "e"), "3"],
        capture_output=True, timeout=30)
    assert (0, b"") == (proc.returncode, proc.stderr)
