"""SlurmAdapter against stub ``sbatch``/``squeue``/``sacct``/``scancel`` on PATH: the faults."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from adapters.base import JobHandle, JobOutcome, StatusError, SubmitError
from adapters.slurm import SlurmAdapter, exit_file_path
from adapters.slurm_parse import key_from_comment
from tests.adapters.support import SlurmStub, make_step, request

FAST = dict(backoff=0.01, max_backoff=0.05, watch_interval=0.02, reconcile_interval=0.2,
            backpressure_interval=0.05, lost_after=1.0, confirm_grace=0.5,
            command_timeout=10.0, submit_timeout=10.0)  # fmt: skip


def adapter(**kw: Any) -> SlurmAdapter:
    return SlurmAdapter({"queue": "debug"}, **{**FAST, **kw})


def step(tmp_path: Path, name: str = "hello", **res: Any) -> Any:
    return make_step(tmp_path / "study", name, "$(LAUNCHER) echo hi\n",
                     description="Say hello", **({"procs": 1} | res))


async def test_submit_runs_sbatch_with_the_key_in_the_comment(tmp_path: Path,
                                                              slurm_stub: SlurmStub) -> None:
    s = step(tmp_path, "hello world")
    handle = await adapter().submit(request(s))
    assert JobHandle(step="hello world", attempt=1, job_id="100", backend="slurm") == handle
    (call,) = slurm_stub.calls("sbatch")
    script = Path(s.workspace) / "hello_world.slurm.sh"
    assert call[1:] == ["--parsable",
                        "--comment=troupe-key=study-1/hello%20world/1 Say hello",
                        "-D", s.workspace, str(script)]  # fmt: skip
    assert "study-1/hello world/1" == key_from_comment(slurm_stub.jobs()["100"]["comment"])
    assert "__troupe_exit=" in script.read_text()


async def test_transient_failures_are_retried_into_one_job(tmp_path: Path,
                                                           slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("transient", "unreachable", "ok")
    with capture_logs() as logs:
        handle = await adapter().submit(request(step(tmp_path)))
    assert ["100"] == list(slurm_stub.jobs()) == [handle.job_id]
    assert 3 == len(slurm_stub.calls("sbatch"))
    # Each retry came after a lookup by key that found nothing.
    assert 2 == len([c for c in slurm_stub.calls("squeue") if "--me" in c])
    assert 2 == len([e for e in logs if e["event"] == "submit_retry"])


async def test_ambiguous_failure_is_reconciled_by_key_into_exactly_one_job(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    """sbatch created the job, then reported a socket timeout: no second sbatch."""
    slurm_stub.plan("ambiguous")
    with capture_logs() as logs:
        handle = await adapter().submit(request(step(tmp_path)))
    assert ["100"] == list(slurm_stub.jobs()) == [handle.job_id]
    assert 1 == len(slurm_stub.calls("sbatch"))
    assert ["submit_reconciled"] == [e["event"] for e in logs if "reconcil" in e["event"]]


async def test_sbatch_timeout_after_creating_the_job_is_reconciled(tmp_path: Path,
                                                                   slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("hang_created")
    handle = await adapter(submit_timeout=0.5).submit(request(step(tmp_path)))
    assert ["100"] == list(slurm_stub.jobs()) == [handle.job_id]


async def test_unparsable_sbatch_output_is_reconciled_then_retried(tmp_path: Path,
                                                                  slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("garbage", "ok")
    handle = await adapter().submit(request(step(tmp_path)))
    assert ["100"] == list(slurm_stub.jobs()) == [handle.job_id]


async def test_permanent_error_fails_with_slurms_message(tmp_path: Path,
                                                         slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("permanent")
    with pytest.raises(SubmitError, match=(
        r"^sbatch: error: invalid partition specified: nopart\n"
        r"sbatch: error: Batch job submission failed: Invalid partition name specified$"
    )) as info:  # fmt: skip
        await adapter().submit(request(step(tmp_path)))
    assert (False, "hello") == (info.value.retryable, info.value.step)
    assert 1 == len(slurm_stub.calls("sbatch"))


async def test_invalid_time_is_a_permanent_error(tmp_path: Path, slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("badtime")
    with pytest.raises(SubmitError, match=r"^sbatch: error: Invalid --time specification$"):
        await adapter().submit(request(step(tmp_path, walltime="abc")))


async def test_submit_limit_is_backpressure_not_failure(tmp_path: Path,
                                                        slurm_stub: SlurmStub) -> None:
    slurm_stub.plan("limit", "limit", "ok")
    with capture_logs() as logs:
        handle = await adapter().submit(request(step(tmp_path)))
    assert "100" == handle.job_id
    assert 2 == len([e for e in logs if e["event"] == "submit_backpressure"])
    assert not [e for e in logs if e["event"] == "submit_retry"]


async def test_backpressure_gives_up_after_its_timeout_as_retryable(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    slurm_stub.plan(*["limit"] * 50)
    with pytest.raises(SubmitError,
                       match=r"^sbatch: error: AssocMaxSubmitJobLimit\n.* \(for 0.2 s\)$") as info:
        await adapter(backpressure_timeout=0.2).submit(request(step(tmp_path)))
    assert info.value.retryable


async def test_transient_failures_beyond_the_retries_fail_as_retryable(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    slurm_stub.plan(*["transient"] * 10)
    with pytest.raises(SubmitError, match=r"^sbatch failed 3 times; last: sbatch: error: Batch job "
                       r"submission failed: Socket timed out on send/recv operation$") as info:
        await adapter(retries=2).submit(request(step(tmp_path)))
    assert info.value.retryable
    assert {} == slurm_stub.jobs()


async def test_nothing_is_resubmitted_while_the_key_cannot_be_looked_up(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    slurm_stub.plan("ambiguous", squeue=("fail", "fail"))
    handle = await adapter().submit(request(step(tmp_path)))
    assert ["100"] == list(slurm_stub.jobs()) == [handle.job_id]
    assert 1 == len(slurm_stub.calls("sbatch"))
    assert 3 == len(slurm_stub.calls("squeue"))


async def test_unknown_outcome_that_stays_unknown_is_not_retryable(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    slurm_stub.plan("transient", squeue=("fail",) * 20)
    with pytest.raises(SubmitError, match=(
        r"^sbatch failed 3 times; .*; outcome unknown: squeue failed: .*\(connect failure\)$"
    )) as info:  # fmt: skip
        await adapter(retries=2).submit(request(step(tmp_path)))
    assert not info.value.retryable
    assert 1 == len(slurm_stub.calls("sbatch"))


async def test_commands_are_looked_up_on_path_when_run(tmp_path: Path, slurm_stub: SlurmStub,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a = adapter()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SubmitError, match=r"^cannot run sbatch: sbatch not found on PATH$"):
        await a.submit(request(step(tmp_path)))


async def test_hundred_submissions_with_faults_make_one_job_per_attempt(
    tmp_path: Path, slurm_stub: SlurmStub,
) -> None:  # fmt: skip
    """30 % transient and 5 % ambiguous sbatch failures: 100 jobs, no duplicates."""
    slurm_stub.plan(random={"seed": 5, "transient": 0.30, "ambiguous": 0.05})
    a = adapter(retries=20)
    handles: list[JobHandle] = []

    async def one(i: int) -> None:
        handles.append(await a.submit(request(step(tmp_path, f"s{i}"))))

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    keys = Counter(key_from_comment(j["comment"]) for j in slurm_stub.jobs().values())
    assert 100 == len(keys) == len(handles) == len({h.job_id for h in handles})
    assert {1} == set(keys.values())
    assert len(slurm_stub.calls("sbatch")) > 100  # the faults happened


# --- wait -----------------------------------------------------------------------


async def submitted(tmp_path: Path, a: SlurmAdapter, name: str = "hello") -> tuple[Any, JobHandle]:
    s = step(tmp_path, name)
    return s, await a.submit(request(s))


async def test_exit_file_zero_completes_the_job(tmp_path: Path, slurm_stub: SlurmStub) -> None:
    a = adapter(reconcile_interval=60)
    s, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state="RUNNING")
    exit_file_path(s, "100").write_text("0\n")
    with anyio.fail_after(5):
        result = await a.wait(handle)
    assert (JobOutcome.COMPLETED, 0) == (result.outcome, result.exit_code)


async def test_nonzero_exit_file_waits_for_slurms_verdict(tmp_path: Path,
                                                          slurm_stub: SlurmStub) -> None:
    a = adapter(confirm_grace=30)
    s, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state="RUNNING")
    exit_file_path(s, "100").write_text("3\n")
    async with anyio.create_task_group() as tg:
        results = []
        tg.start_soon(lambda: _collect(a, handle, results))
        await anyio.sleep(0.3)
        assert not results  # Slurm still says RUNNING
        slurm_stub.set_job("100", state="FAILED", exit="3:0")
    assert (JobOutcome.FAILED, 3) == (results[0].outcome, results[0].exit_code)


async def _collect(a: SlurmAdapter, handle: JobHandle, out: list[Any]) -> None:
    with anyio.fail_after(10):
        out.append(await a.wait(handle))


@pytest.mark.parametrize(("state", "exit", "outcome", "code"), [
    ("CANCELLED", "0:15", JobOutcome.CANCELLED, -15),
    ("TIMEOUT", "0:0", JobOutcome.TIMEOUT, 0),
    ("NODE_FAIL", "0:0", JobOutcome.NODE_FAIL, 0),
    ("OUT_OF_MEMORY", "0:125", JobOutcome.OUT_OF_MEMORY, -125),
    ("PREEMPTED", "0:0", JobOutcome.PREEMPTED, 0),
    ("FAILED", "0:9", JobOutcome.FAILED, -9),
])  # fmt: skip
async def test_jobs_that_never_reach_the_trailer_end_as_slurm_says(
    tmp_path: Path, slurm_stub: SlurmStub, state: str, exit: str, outcome: JobOutcome, code: int,
) -> None:  # fmt: skip
    a = adapter()
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state=state, exit=exit)
    with anyio.fail_after(5):
        result = await a.wait(handle)
    assert (outcome, code) == (result.outcome, result.exit_code)


async def test_job_gone_from_squeue_is_read_from_sacct(tmp_path: Path,
                                                       slurm_stub: SlurmStub) -> None:
    a = adapter()
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state="CANCELLED", purged=True)
    with anyio.fail_after(5):
        result = await a.wait(handle)
    assert (JobOutcome.CANCELLED, "CANCELLED by 0 0:0") == (result.outcome, result.detail)


async def test_no_row_yet_is_unknown_not_failed(tmp_path: Path, slurm_stub: SlurmStub) -> None:
    a = adapter(lost_after=30)
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", purged=True, no_sacct=True)  # not visible anywhere yet
    async with anyio.create_task_group() as tg:
        results: list[Any] = []
        tg.start_soon(lambda: _collect(a, handle, results))
        await anyio.sleep(0.6)  # several reconcile rounds without a row
        assert not results
        slurm_stub.set_job("100", purged=False, state="COMPLETED")
    assert JobOutcome.COMPLETED == results[0].outcome


async def test_a_job_without_any_record_for_lost_after_is_lost(tmp_path: Path,
                                                               slurm_stub: SlurmStub) -> None:
    a = adapter(lost_after=0.5)
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", purged=True, no_sacct=True)
    with anyio.fail_after(5):
        result = await a.wait(handle)
    assert (JobOutcome.LOST, "no record of job 100 for 0.5 s") == (result.outcome, result.detail)


async def test_exit_file_stands_when_accounting_is_disabled(tmp_path: Path,
                                                            slurm_stub: SlurmStub) -> None:
    slurm_stub.plan(accounting=False)
    a = adapter()
    s, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", purged=True)
    exit_file_path(s, "100").write_text("4\n")
    with anyio.fail_after(5):
        result = await a.wait(handle)
    assert (JobOutcome.FAILED, 4, "exit file: 4") == (result.outcome, result.exit_code,
                                                      result.detail)


async def test_squeue_failing_for_lost_after_raises_status_error(tmp_path: Path,
                                                                 slurm_stub: SlurmStub) -> None:
    a = adapter(lost_after=0.5)
    _, handle = await submitted(tmp_path, a)
    slurm_stub.plan(squeue=("fail",) * 100)
    with pytest.raises(StatusError, match=(
        r"^job 100: status unknown for 0.5 s: squeue failed: .*\(connect failure\)$"
    )):  # fmt: skip
        with anyio.fail_after(5):
            await a.wait(handle)


async def test_many_waits_share_one_batched_query_per_interval(tmp_path: Path,
                                                               slurm_stub: SlurmStub) -> None:
    a = adapter(reconcile_interval=0.25)
    pairs = [await submitted(tmp_path, a, f"s{i}") for i in range(20)]
    results: list[Any] = []
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _, handle in pairs:
            tg.start_soon(_collect, a, handle, results)
        await anyio.sleep(1.0)
        for s, handle in pairs:
            exit_file_path(s, handle.job_id).write_text("0\n")
    elapsed = anyio.current_time() - start
    assert 20 == len(results) and {JobOutcome.COMPLETED} == {r.outcome for r in results}
    queries = [c for c in slurm_stub.calls("squeue") if "-j" in c]
    assert len(queries) <= elapsed / 0.25 + 2
    assert 20 == max(len(q[q.index("-j") + 1].split(",")) for q in queries)


# --- cancel, find, local steps -------------------------------------------------------


async def test_cancel_runs_scancel_and_the_job_ends_cancelled(tmp_path: Path,
                                                              slurm_stub: SlurmStub) -> None:
    a = adapter()
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state="RUNNING")
    await a.cancel(handle)
    assert [["scancel", "100"]] == slurm_stub.calls("scancel")
    with anyio.fail_after(5):
        assert JobOutcome.CANCELLED == (await a.wait(handle)).outcome


async def test_cancelling_an_ended_job_is_a_no_op(tmp_path: Path, slurm_stub: SlurmStub) -> None:
    a = adapter()
    _, handle = await submitted(tmp_path, a)
    slurm_stub.set_job("100", state="COMPLETED")
    await a.cancel(handle)
    assert "COMPLETED" == slurm_stub.jobs()["100"]["state"]


async def test_find_readopts_a_job_by_its_key_after_a_restart(tmp_path: Path,
                                                              slurm_stub: SlurmStub) -> None:
    s, handle = await submitted(tmp_path, adapter())
    restarted = adapter()
    assert handle == await restarted.lookup(request(s))
    assert await restarted.lookup(request(s, attempt=2)) is None
    slurm_stub.set_job("100", purged=True, state="COMPLETED")  # only sacct knows it now
    assert handle == await restarted.lookup(request(s))
    exit_file_path(s, "100").write_text("0\n")
    with anyio.fail_after(5):
        assert JobOutcome.COMPLETED == (await restarted.wait(handle)).outcome


async def test_a_step_without_nodes_or_procs_runs_locally(tmp_path: Path,
                                                          slurm_stub: SlurmStub) -> None:
    s = make_step(tmp_path, "local", "echo local > out.txt\n")
    a = adapter()
    handle = await a.submit(request(s))
    assert "local" == handle.backend
    with anyio.fail_after(10):
        result = await a.wait(handle)
    assert (JobOutcome.COMPLETED, "local\n") == (result.outcome,
                                                (Path(s.workspace) / "out.txt").read_text())
    assert not slurm_stub.calls("sbatch")
