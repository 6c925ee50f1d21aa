"""The job shell: a study's side of its adapter.

It carries out the step machines' job commands: ``run`` is one attempt's life (store its
intent, submit, wait) and yields ``JobStarted`` or ``SubmitFailed``, then ``JobExited``,
for the loop to put back into the step's inbox; ``cancel`` stops an attempt (one still
being submitted is stopped as soon as its handle exists); ``adopted`` waits for a job
re-adopted after an engine restart. While a step runs, the few children it alone holds
back (a chain's next step) are prepared ahead (``Adapter.prepare``), so their submission
only starts a process. Scheduler jobs that push their exit status over NATS are heard by
``listen_reports``.

Invariant: ``_handles`` holds an attempt's handle from its submission until its wait
returns; ``_cancel_pending`` holds the attempts cancelled before their handle existed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from adapters.base import Adapter, JobHandle, JobRequest, SubmitError
from engine import subjects
from engine.errors import StoreError
from engine.machines.samples import SEP
from engine.machines.step import StepRecord
from engine.messages import (
    Event,
    JobExited,
    JobReported,
    JobStarted,
    StepState,
    SubmitFailed,
    TasksAlive,
    WorkerAlive,
    new_event_id,
)
from engine.spec.environment import unresolved_tokens
from engine.spec.graph import StepInstance, StudyGraph

if TYPE_CHECKING:
    from engine.actors.persist import Persister
    from engine.bus import Bus

__all__ = ["JobShell"]

_PREPARE_AHEAD = 4  # children prepared ahead per started step, at most


class JobShell:
    """Submits, waits for, cancels and prepares one study's jobs.

    Args:
        adapter: The backend.
        graph: The study.
        study_id: Its id (the attempts' keys are ``<study>/<step>/<attempt>``).
        records: The live step records (read to choose the children to prepare).
        resolve: The instance a record name runs as it is submitted now (a decided race
            substituted; a sample's own values).
        persister: Where intents are stored before each submission (None: nothing
            resumes this study).
        clock: Seconds since the epoch.
        intent_ahead: Stores the intent of a child's next attempt while the child is
            prepared ahead (a chain's next step), so that its submission waits for no
            write; None: nothing resumes this study.
        warn: Says a warning about a step (``(step, message)``).
        strict: An unresolved token fails the step's submission instead.
        engine_slots: An engine-wide limit (``serve --max-running``): a job holds one of
            its tokens from its submission until it ended; None: no such limit.
    """

    def __init__(
        self, adapter: Adapter, graph: StudyGraph, *, study_id: str,
        records: Mapping[str, StepRecord], resolve: Callable[[str], StepInstance],
        persister: Persister | None = None, clock: Callable[[], float] = time.time,
        intent_ahead: Callable[[str], None] | None = None,
        warn: Callable[[str, str], None] = lambda step, message: None, strict: bool = False,
        engine_slots: anyio.CapacityLimiter | None = None,
    ) -> None:  # fmt: skip
        self.adapter = adapter
        self.graph = graph
        self.study_id = study_id
        self._records = records
        self._resolve = resolve
        self._persister = persister
        self._intent_ahead = intent_ahead
        self._clock = clock
        self._warn = warn
        self._strict = strict
        self._engine_slots = engine_slots
        self._warned: set[tuple[str, str]] = set()
        self._handles: dict[tuple[str, int], JobHandle] = {}
        self._cancel_pending: set[tuple[str, int]] = set()
        self._log = structlog.get_logger("troupe.jobs").bind(study_id=study_id)

    def _unresolved(self, inst: StepInstance, restart: bool) -> str:
        """The first ``$(TOKEN)`` left in the command about to run, said once per spec
        step and token (a warning on the terminal and a ``StepWarning`` event)."""
        text = inst.restart if restart and inst.restart else inst.cmd
        if "$(" not in text:
            return ""
        left = unresolved_tokens(text)
        for token in left:
            if (inst.step, token) not in self._warned:
                self._warned.add((inst.step, token))
                self._warn(inst.name, f"unresolved token {token} in the command of step "
                           f"'{inst.step}' is left for the shell")
        return left[0] if left else ""

    def refusal(self, inst: StepInstance, restart: bool = False) -> str:
        """Why ``inst``'s command may not run: an unresolved token under ``--strict``
        (said as a warning either way), else ""."""
        left = self._unresolved(inst, restart)
        return f"unresolved token {left} in its command (--strict)" if left and self._strict else ""

    def active_jobs(self) -> dict[tuple[str, int], JobHandle]:
        """The jobs submitted and not yet ended, by ``(step, attempt)``."""
        return dict(self._handles)

    def kill_all_now(self) -> None:
        """Kill every job at once (a second cancel of the study)."""
        self.adapter.kill_all_now()

    async def run(self, name: str, attempt: int, restart: bool) -> AsyncIterator[Event]:
        """One attempt's life: store the intent, submit, report the start, wait, report
        the exit. An intent the store could not take (the persister gave up) and a
        refused submission both end as ``SubmitFailed``."""
        inst = self._resolve(name)
        refused = self.refusal(inst, restart)
        if refused:
            yield SubmitFailed(event_id=new_event_id(), retryable=False, detail=refused)
            return
        if self._persister is not None and SEP not in name:  # (samples: their step is)
            try:
                await self._persister.wait_intent(name, attempt)
            except StoreError as exc:
                # Never submit an attempt a restarted engine could not know about.
                self._log.error("intent_not_stored", step=name, attempt=attempt, error=str(exc))
                yield SubmitFailed(event_id=new_event_id(), retryable=False,
                                   detail=f"its intent could not be stored: {exc}")
                return
        request = JobRequest(step=inst, attempt=attempt, restart=restart, name=name,
                             bulk=SEP in name,
                             key=f"{self.study_id}/{name.replace(SEP, '#')}/{attempt}")
        slots, borrower = self._engine_slots, object()
        if slots is not None:
            # The engine-wide limit: a token held until the job ended (by a borrower of
            # its own, so that whichever task ends it may give it back).
            await slots.acquire_on_behalf_of(borrower)
            if (name, attempt) in self._cancel_pending:  # cancelled while it waited
                self._cancel_pending.discard((name, attempt))
                slots.release_on_behalf_of(borrower)
                yield SubmitFailed(event_id=new_event_id(), detail="cancelled before it started")
                return
        try:
            async for event in self._submit_and_wait(request, name, attempt):
                yield event
        finally:
            if slots is not None:
                slots.release_on_behalf_of(borrower)

    async def _submit_and_wait(self, request: JobRequest, name: str,
                               attempt: int) -> AsyncIterator[Event]:
        try:
            handle = await self.adapter.submit(request)
        except SubmitError as exc:
            self._log.warning("submit_failed", step=name, attempt=attempt, error=str(exc))
            yield SubmitFailed(event_id=new_event_id(), detail=str(exc),
                               retryable=exc.retryable)
            return
        key = (name, attempt)
        self._handles[key] = handle
        # Before its start is known: a worker's task may be heard of only when it ended.
        self._prepare_children(name)
        await self.adapter.started(handle)  # a worker's task: once a worker runs it
        yield JobStarted(event_id=new_event_id(), job_id=handle.job_id, time=self._clock())
        if key not in self._cancel_pending:
            yield await self._wait(handle)
            return
        self._cancel_pending.discard(key)  # cancelled while it was being submitted
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.adapter.cancel, handle)
            exited = await self._wait(handle)
        yield exited

    async def adopted(self, handle: JobHandle) -> AsyncIterator[Event]:
        """Wait for a job re-adopted after an engine restart and report its exit."""
        self._handles[(handle.step, handle.attempt)] = handle
        yield await self._wait(handle)

    async def cancel(self, name: str, attempt: int) -> None:
        """Stop an attempt; its exit comes from the task that waits for it."""
        handle = self._handles.get((name, attempt))
        if handle is None:
            self._cancel_pending.add((name, attempt))  # still being submitted
            return
        await self.adapter.cancel(handle)

    async def _wait(self, handle: JobHandle) -> JobExited:
        try:
            result = await self.adapter.wait(handle)
        finally:
            self._handles.pop((handle.step, handle.attempt), None)
        return JobExited(event_id=new_event_id(), exit_code=result.exit_code,
                         outcome=result.outcome, detail=result.detail,
                         time=self._clock())

    def _prepare_children(self, name: str) -> None:
        """Once ``name`` is submitted (it runs, or waits in a queue), prepare the children it
        alone holds back (a chain's next step: its intent stored, its script written),
        unless it fans out (preparing them all would hold up its own end)."""
        children = self.graph.children.get(name, ())  # (a sample has none)
        if len(children) > _PREPARE_AHEAD:
            return
        for child in children:
            rec, inst = self._records[child], self.graph.by_name[child]
            if (rec.state == StepState.INITIALIZED and rec.remaining == 1 and not inst.when
                    and not inst.sampled):
                if self._intent_ahead is not None:
                    self._intent_ahead(child)  # its submission then waits for no write
                try:
                    self.adapter.prepare(self._resolve(child))
                except OSError:
                    pass  # its submission writes the files again (and reports the error)

    async def listen_reports(
        self, bus: Bus, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hand the exit statuses that scheduler jobs and workers push over NATS to the
        adapter, as they arrive (in the bus's delivery callback)."""

        def heard(msg: object) -> None:
            try:
                if isinstance(msg, JobReported):
                    self.adapter.report(msg.exit_file, msg.exit_code)
                elif isinstance(msg, TasksAlive):
                    self.adapter.alive(msg.keys)
                elif isinstance(msg, WorkerAlive) and not msg.stopping:
                    self.adapter.serving(msg.queues)
            except Exception:  # noqa: BLE001 - said, never lost in the bus's callback
                self._log.exception("report_not_handled", message=type(msg).__name__)

        async with bus.handle(subjects.job_reports(self.study_id), subjects.WORKERS_ALIVE,
                              handler=heard):
            task_status.started()
            await anyio.sleep_forever()
