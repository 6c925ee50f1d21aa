"""The workers adapter alone (no bus, no worker): a fake queue and a fake clock. How an
attempt's wait ends: the worker's report, the exit file when the report is lost, the loss
of a worker that fell silent (also one that died before its first heartbeat, once its
claim is seen), and a cancel of an attempt still in its queue."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec
import pytest

from adapters.base import JobOutcome
from adapters.local import LocalAdapter
from adapters.workers import WorkersAdapter
from engine.messages import BUS_DECODER, Task
from tests.adapters.support import make_step, request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def queued() -> list[Task]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def adapter(queued: list[Task], clock: Clock) -> WorkersAdapter:
    async def queue_task(queue: str, payload: bytes, key: str) -> None:
        task = BUS_DECODER.decode(payload)
        assert isinstance(task, Task) and (queue, key) == (task.queue, task.key)
        queued.append(task)

    async def publish(subject: str, message: object) -> None:
        del subject, message

    return WorkersAdapter(LocalAdapter(shell="/bin/sh"), queue_task=queue_task, publish=publish,
                          study_id="study-1", report_subject="troupe.v1.jobs.study-1",
                          poll=0.01, lost_after=30.0, clock=clock)


async def test_the_report_ends_the_wait_and_the_task_names_the_queue(
        adapter: WorkersAdapter, queued: list[Task], tmp_path: Path) -> None:
    step = msgspec.structs.replace(make_step(tmp_path, "s", "true"), task_queue="gpu")
    handle = await adapter.submit(request(step))
    [task] = queued
    assert ("gpu", "study-1/s/1") == (task.queue, task.key)
    assert adapter.report(task.exit_file, 3)
    result = await adapter.wait(handle)
    assert (JobOutcome.FAILED, 3) == (result.outcome, result.exit_code)
    assert not adapter.report(task.exit_file, 0)  # a late second report is ignored


async def test_the_status_in_the_claim_ends_the_wait_when_the_report_is_lost(
        adapter: WorkersAdapter, queued: list[Task], tmp_path: Path) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    claim = queued[0].exit_file[: -len(".exit")] + ".pid"
    Path(claim).write_text("worker w1 4242\nexit 0\n")  # what the worker appends
    with anyio.fail_after(10):
        result = await adapter.wait(handle)
    assert JobOutcome.COMPLETED == result.outcome


async def _lost_after_silence(adapter: WorkersAdapter, clock: Clock, handle: object) -> object:
    async with anyio.create_task_group() as tg:
        got: list[object] = []

        async def wait() -> None:
            got.append(await adapter.wait(handle))  # type: ignore[arg-type]

        tg.start_soon(wait)
        await anyio.sleep(0.1)
        assert not got  # silent for less than lost_after: still waiting
        clock.now += 31
        with anyio.fail_after(10):
            while not got:
                await anyio.sleep(0.01)
    return got[0]


async def test_an_attempt_whose_worker_fell_silent_is_lost(
        adapter: WorkersAdapter, clock: Clock, tmp_path: Path) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    adapter.alive(["study-1/s/1"])  # its worker said it runs it, once
    result = await _lost_after_silence(adapter, clock, handle)
    assert JobOutcome.NODE_FAIL == result.outcome  # type: ignore[attr-defined]


@pytest.mark.parametrize("claim", [f"worker w1 {os.getpid()}\n", ""],
                         ids=["named", "empty: killed between creating and naming it"])
async def test_a_claimed_attempt_whose_worker_never_said_it_runs_is_lost(
        adapter: WorkersAdapter, queued: list[Task], clock: Clock, tmp_path: Path,
        claim: str) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    pid_file = queued[0].exit_file[: -len(".exit")] + ".pid"
    Path(pid_file).write_text(claim)  # a worker claimed it, then died
    result = await _lost_after_silence(adapter, clock, handle)
    assert JobOutcome.NODE_FAIL == result.outcome  # type: ignore[attr-defined]


async def test_an_unclaimed_attempt_waits_in_its_queue_however_long(
        adapter: WorkersAdapter, clock: Clock, tmp_path: Path) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    clock.now += 3600  # no worker took it: not lost, only waiting
    with anyio.move_on_after(0.2) as waited:
        await adapter.wait(handle)
    assert waited.cancelled_caught


async def test_cancelling_a_queued_attempt_claims_it_so_no_worker_runs_it(
        adapter: WorkersAdapter, queued: list[Task], tmp_path: Path) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    await adapter.cancel(handle)
    result = await adapter.wait(handle)
    assert JobOutcome.CANCELLED == result.outcome
    assert "cancelled\n" == Path(queued[0].exit_file[: -len(".exit")] + ".pid").read_text()


async def test_a_queued_task_is_started_only_once_a_worker_says_it_runs_it(
        adapter: WorkersAdapter, tmp_path: Path) -> None:
    handle = await adapter.submit(request(make_step(tmp_path, "s", "true")))
    with anyio.move_on_after(0.2) as waited:
        await adapter.started(handle)
    assert waited.cancelled_caught  # still in its queue: PENDING, no walltime yet
    adapter.alive(["study-1/s/1"])
    with anyio.fail_after(5):
        await adapter.started(handle)


async def test_a_task_cancelled_in_its_queue_or_ended_ends_the_wait_for_its_start(
        adapter: WorkersAdapter, queued: list[Task], tmp_path: Path) -> None:
    first = await adapter.submit(request(make_step(tmp_path, "a", "true")))
    second = await adapter.submit(request(make_step(tmp_path, "b", "true")))
    await adapter.cancel(first)
    adapter.report(queued[1].exit_file, 0)
    with anyio.fail_after(5):
        await adapter.started(first)
        await adapter.started(second)
