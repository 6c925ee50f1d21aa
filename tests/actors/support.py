"""Helpers shared by the shell tests: small graphs, a runtime running in a task group, the
step events it published, and a ``FakeAdapter`` that also records what the fake leaves
out (``prepare``, ``kill_all_now``) and can take over a job an earlier engine started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from adapters.base import JobHandle, JobOutcome, JobResult
from adapters.fake import FakeAdapter
from engine.actors.study import StudyRuntime
from engine.messages import StepStateChanged
from engine.spec.graph import StepInstance, StudyGraph
from engine.testing import FakeBus

__all__ = ["RecordingAdapter", "changes", "graph", "inst", "running"]

GUARD = 10.0  # seconds: a hung test fails instead of blocking the suite


def inst(name: str, *parents: str, step: str = "", workspace: str = "", cmd: str = "true",
         race: str = "", when: str = "") -> StepInstance:
    """A step instance (its spec step is ``step`` or its own name)."""
    return StepInstance(name=name, step=step or name, description="",
                        workspace=workspace or f"/study/{name}", cmd=cmd, parents=parents,
                        race=race, when=when)


def graph(*steps: StepInstance, troupe: dict[str, Any] | None = None) -> StudyGraph:
    """A study of ``steps`` (in topological order)."""
    return StudyGraph(name="t", description="t", spec_path="/t.yaml", study_dir="/study",
                      steps=steps, troupe=troupe or {})


def changes(bus: FakeBus, step: str) -> list[StepStateChanged]:
    """Every ``StepStateChanged`` of ``step`` the runtime published, in order."""
    return [m for _, m in bus.published if isinstance(m, StepStateChanged) and m.step == step]


@asynccontextmanager
async def running(rt: StudyRuntime) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run ``rt`` in a task group; the body starts once every actor listens, and the block
    ends when the study does (or fails after ``GUARD`` seconds)."""
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await tg.start(rt.run)
            yield tg


class RecordingAdapter(FakeAdapter):
    """A ``FakeAdapter`` that records ``prepare`` and ``kill_all_now``.

    Args:
        stubborn: Jobs ignore ``cancel`` (SIGTERM); only ``kill_all_now`` ends them.
    """

    def __init__(self, *, stubborn: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.stubborn = stubborn
        self.prepared: list[str] = []
        self.kills = 0

    def prepare(self, step: StepInstance) -> None:
        self.prepared.append(step.name)

    def adopt(self, handle: JobHandle) -> None:
        """Know a job an earlier engine submitted, so that ``wait`` and ``finish`` work."""
        self._done[(handle.step, handle.attempt)] = anyio.Event()

    async def cancel(self, handle: JobHandle) -> None:
        if self.stubborn:
            self.cancelled.append((handle.step, handle.attempt))
            return
        await super().cancel(handle)

    def kill_all_now(self) -> None:
        """End every job still running as if SIGKILL hit it."""
        self.kills += 1
        for key, done in self._done.items():
            if not done.is_set():
                self._codes[key] = JobResult(outcome=JobOutcome.CANCELLED, exit_code=-9)
                done.set()
