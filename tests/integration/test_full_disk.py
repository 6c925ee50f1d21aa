"""A full disk: the study's log and status.csv cannot be written. Each is said once, in one
line, never as a traceback per record, and the study goes on (``/dev/full`` answers every
write with ENOSPC, as a full file system does)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import anyio
import pytest
import structlog

import engine.status
from adapters.fake import FakeAdapter
from engine.actors.study import StudyRuntime
from engine.log import study_log_file
from engine.messages import StudyState
from engine.spec.graph import StepInstance, StudyGraph
from engine.testing import FakeBus

DEV_FULL = Path("/dev/full")


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")
def test_a_study_log_on_a_full_disk_is_given_up_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = logging.getLogger("troupe.test")
    with study_log_file(DEV_FULL):
        for i in range(34):
            log.warning("line %d", i)
    err = capsys.readouterr().err
    assert 1 == err.count("cannot write the study's log"), err
    assert "Traceback" not in err and "Logging error" not in err
    [said] = [line for line in err.splitlines() if "cannot write the study's log" in line]
    assert said.startswith("warning: ") and said.endswith("it is no longer written")


async def test_a_status_table_that_cannot_be_written_does_not_stop_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: object, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.status, "write_status", full)
    steps = tuple(StepInstance(name=n, step=n, description="", workspace=str(tmp_path / n),
                               cmd="true") for n in "ab")
    graph = StudyGraph(name="t", description="t", spec_path="/t.yaml",
                       study_dir=str(tmp_path), steps=steps)
    adapter = FakeAdapter()
    runtime = StudyRuntime(graph, study_id="sid", bus=FakeBus(), adapter=adapter,
                           status_path=tmp_path / "status.csv")
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run)
            for name in "ab":
                await adapter.wait_submitted(name)
                adapter.finish(name)
    assert StudyState.FINISHED == runtime.outcome
    assert 1 == len([e for e in logs if e["event"] == "status_not_written"])
