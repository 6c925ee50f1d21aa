"""The local adapter against real processes: the two ways of starting a step (the script
itself under ``run``; through the claiming keeper under ``serve``), Maestro's output file
names, and scripts written ahead of submission."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters.base import JobOutcome, JobRequest
from adapters.local import LocalAdapter, script_path
from engine.spec.graph import StepInstance


def _step(tmp_path: Path, cmd: str, name: str = "s") -> StepInstance:
    return StepInstance(name=name, step=name, description="", workspace=str(tmp_path / name),
                        cmd=cmd)


@pytest.mark.parametrize("adoptable", [False, True])
async def test_output_goes_to_files_named_after_the_job_id(
    tmp_path: Path, adoptable: bool
) -> None:
    adapter = LocalAdapter(shell="/bin/sh", adoptable=adoptable)
    step = _step(tmp_path, "echo out; echo err >&2; exit 3")
    handle = await adapter.submit(JobRequest(step=step, attempt=1, key="k"))
    result = await adapter.wait(handle)
    assert (JobOutcome.FAILED, 3) == (result.outcome, result.exit_code)
    ws = Path(step.workspace)
    assert "out\n" == (ws / f"s.{handle.job_id}.out").read_text()
    assert "err\n" == (ws / f"s.{handle.job_id}.err").read_text()
    # Only serve's keeper leaves the claim, with the exit status, for a restarted engine.
    claim = ws / ".troupe.1.pid"
    assert adoptable == claim.exists()
    if adoptable:
        keeper = claim.read_text().split()[1]
        assert [f"{handle.job_id} {keeper}", "exit 3"] == claim.read_text().splitlines()
    assert not (ws / ".troupe.1.exit").exists()
    await adapter.cleanup()


async def test_a_prepared_script_is_used_as_written_and_a_changed_one_rewritten(
    tmp_path: Path,
) -> None:
    adapter = LocalAdapter(shell="/bin/sh", adoptable=False)
    step = _step(tmp_path, "echo first")
    adapter.prepare(step)
    path = script_path(step)
    assert "#!/bin/sh\n\necho first\n" == path.read_text()
    written = os.stat(path).st_mtime_ns
    os.utime(path, ns=(written - 10**9, written - 10**9))  # mark: rewriting would touch it
    marked = os.stat(path).st_mtime_ns
    handle = await adapter.submit(JobRequest(step=step, attempt=1, key="k"))
    assert JobOutcome.COMPLETED == (await adapter.wait(handle)).outcome
    assert marked == os.stat(path).st_mtime_ns, "the prepared script was not written again"

    adapter.prepare(step)
    changed = _step(tmp_path, "echo second")  # e.g. a race's winner substituted since
    handle = await adapter.submit(JobRequest(step=changed, attempt=2, key="k2"))
    assert JobOutcome.COMPLETED == (await adapter.wait(handle)).outcome
    assert "#!/bin/sh\n\necho second\n" == path.read_text()
    assert "second\n" == (Path(step.workspace) / f"s.{handle.job_id}.out").read_text()


async def test_a_waiting_entry_with_an_intent_is_looked_up_and_fenced_off(tmp_path: Path) -> None:
    from engine.backends import make_backends
    from engine.spec.graph import StudyGraph
    from engine.store import StepEntry

    step = _step(tmp_path, "true")
    graph = StudyGraph(name="t", description="t", spec_path=str(tmp_path / "t.yaml"),
                       study_dir=str(tmp_path), steps=(step,))
    backends = make_backends(graph, study_id="sid")
    entries = {
        "s": StepEntry(study_id="sid", step="s", state="WAITING", attempt=0, intent_attempt=1),
    }
    os.makedirs(step.workspace)
    assert {"s": None} == await backends.lookup_inflight(graph, "sid", entries)
    # The attempt can never start now: the claim is taken.
    assert "superseded" in (Path(step.workspace) / ".troupe.1.pid").read_text()
    plain = {"s": StepEntry(study_id="sid", step="s", state="WAITING", attempt=1,
                            intent_attempt=1)}
    assert {} == await backends.lookup_inflight(graph, "sid", plain), "no intent: not looked up"
