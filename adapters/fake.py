"""A fake backend for tests: jobs end when the test says so.

``FakeAdapter.submit`` records the submission and returns at once (or raises the
``SubmitError`` planned for that step); ``wait`` blocks until the test calls
``finish(step, code)`` or the job is cancelled (exit code -15). Tests await
``wait_submitted(step)`` instead of sleeping.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from adapters.base import Adapter, JobHandle, JobOutcome, JobRequest, JobResult, SubmitError

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = ["FakeAdapter"]


class FakeAdapter(Adapter):
    """An adapter whose jobs are controlled by the test."""

    name = "fake"

    def __init__(self, *, submit_errors: dict[str, str] | None = None) -> None:
        self.submit_errors = dict(submit_errors or {})
        self.submitted: list[tuple[str, int]] = []
        self.requests: list[JobRequest] = []
        self.cancelled: list[tuple[str, int]] = []
        self.scripts: list[str] = []
        self._codes: dict[tuple[str, int], JobResult] = {}
        self._done: dict[tuple[str, int], anyio.Event] = {}
        self._seen: dict[str, anyio.Event] = {}
        self._next_id = 100

    def write_script(self, step: StepInstance) -> Path:
        """Record the request; nothing is written."""
        self.scripts.append(step.name)
        return Path(step.workspace) / f"{step.name}.sh"

    async def submit(self, request: JobRequest) -> JobHandle:
        """Record the submission, or raise the planned ``SubmitError``."""
        step, attempt = request.step, request.attempt
        self.requests.append(request)
        self._seen.setdefault(step.name, anyio.Event()).set()
        if step.name in self.submit_errors:
            raise SubmitError(self.submit_errors[step.name], step.name)
        key = (request.actor, attempt)
        self.submitted.append(key)
        self._done[key] = anyio.Event()
        self._next_id += 1
        return JobHandle(step=request.actor, attempt=attempt, job_id=str(self._next_id), backend="fake")

    async def wait(self, handle: JobHandle) -> JobResult:
        """Block until the test (or a cancel) ends the job."""
        key = (handle.step, handle.attempt)
        await self._done[key].wait()
        return self._codes[key]

    async def cancel(self, handle: JobHandle) -> None:
        """End the job as if SIGTERM killed it."""
        key = (handle.step, handle.attempt)
        self.cancelled.append(key)
        if not self._done[key].is_set():
            self._codes[key] = JobResult(outcome=JobOutcome.CANCELLED, exit_code=-15)
            self._done[key].set()

    def finish(self, step: str, code: int = 0, attempt: int = 1,
               outcome: JobOutcome | None = None) -> None:
        """End a submitted job with exit ``code`` (or an explicit ``outcome``)."""
        key = (step, attempt)
        if outcome is None:
            outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
        self._codes[key] = JobResult(outcome=outcome, exit_code=code)
        self._done[key].set()

    async def wait_submitted(self, step: str) -> None:
        """Return once ``step`` has been submitted (successfully or not)."""
        await self._seen.setdefault(step, anyio.Event()).wait()
