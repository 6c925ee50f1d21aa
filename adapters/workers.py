"""The workers adapter: a step's attempt becomes a task in a JetStream queue, which a
worker process (``enginectl worker``, ``engine.worker``) takes, runs and reports.

``submit`` writes the step's script into its workspace (on the file system the workers
share), and queues a ``Task`` naming it, with the attempt's key as the message id. The
worker claims the attempt (creates ``.troupe.<attempt>.pid`` exclusively, so one attempt
never runs twice), runs the script, publishes its exit status to the study's report
subject, which the engine hands to ``report``, and appends it to the claim (``exit N``),
which the engine reads should that message be lost. (``Task.exit_file``, the path
``.troupe.<attempt>.exit``, names the attempt in reports; no such file is written.) ``cancel`` claims an attempt
still waiting in its queue (the worker that takes it then never runs it) and asks the
workers to stop one that runs (``WorkerCancel``). After an engine restart ``lookup``
adopts the attempts workers run, applies those that ended, and fences off the ones
still queued, by their claims.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from adapters.base import (
    Adapter,
    JobHandle,
    JobOutcome,
    JobRequest,
    JobResult,
    SubmitError,
)
from adapters.local import output_stem, script_path
from engine.messages import ENCODER, BusMessage, Task, WorkerCancel, new_event_id
from engine.subjects import WORKER_CANCEL

if TYPE_CHECKING:
    from adapters.local import LocalAdapter
    from engine.spec.graph import StepInstance

__all__ = ["DEFAULT_QUEUE", "WorkersAdapter"]

DEFAULT_QUEUE = "default"
CANCELLED = "cancelled\n"  # what a claim made by the engine holds (no worker runs it)


class WorkersAdapter(Adapter):
    """Steps as tasks for workers (see the module docstring).

    Args:
        local: The local adapter, whose scripts and file names the workers use.
        queue_task: Puts ``(queue, payload, key)`` on the tasks stream, acknowledged.
        publish: Sends ``(subject, message)`` (the cancel requests).
        study_id: The study.
        report_subject: Where the workers report exit statuses.
        kill_grace: Seconds a worker waits between SIGTERM and SIGKILL on cancel.
        poll: Seconds between two reads of an unreported attempt's exit file.
        lost_after: Seconds without a heartbeat after which an attempt a worker had
            started is lost (its worker died with it): it ends as a node failure, which
            the supervisor's policy resubmits as a new attempt (``hw_limit``).
    """

    name = "workers"
    takes_reports = True

    def __init__(self, local: LocalAdapter, *,
                 queue_task: Callable[[str, bytes, str], Awaitable[None]],
                 publish: Callable[[str, BusMessage], Awaitable[None]], study_id: str,
                 report_subject: str, env: Mapping[str, str] | None = None,
                 kill_grace: float = 10.0, poll: float = 2.0, lost_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._local = local
        self._queue_task = queue_task
        self._publish = publish
        self._study_id = study_id
        self._report_subject = report_subject
        self._env = dict(env or {})
        self._kill_grace = kill_grace
        self._poll = poll
        # exit file -> (set once it ended, its exit code, set once it runs or ended)
        self._waiting: dict[str, tuple[anyio.Event, list[int], anyio.Event]] = {}
        self._exit_files: dict[tuple[str, int], str] = {}
        self._lost_after = lost_after
        self._clock = clock
        self._seen: dict[str, float] = {}  # attempt key -> when a worker last said it runs
        self._running: dict[str, anyio.Event] = {}  # attempt key -> its third event above
        self._served: dict[str, float] = {}  # queue -> when a worker serving it was heard
        self._unserved: set[str] = set()  # queues already warned about
        self._log = structlog.get_logger("troupe.workers")

    def write_script(self, step: StepInstance) -> Path:
        return self._local.write_script(step)

    def prepare(self, step: StepInstance) -> None:
        self._local.prepare(step)

    async def submit(self, request: JobRequest) -> JobHandle:
        """Write the script and queue the task; the handle's job id is the attempt key.

        Raises:
            SubmitError: the script could not be written, or the queue refused the task.
        """
        step, attempt = request.step, request.attempt
        try:
            self._local.ensure_script(step)
        except OSError as exc:
            raise SubmitError(f"{type(exc).__name__}: {exc}", step.name) from exc
        script = script_path(step, restart=request.restart and bool(step.restart))
        stem = output_stem(step) + (".restart" if request.restart and step.restart
                                    and self._local.merlin else "")
        exit_file = os.path.join(step.workspace, f".troupe.{attempt}.exit")
        task = Task(event_id=new_event_id(), study_id=self._study_id, step=request.actor,
                    attempt=attempt, key=request.key, queue=step.task_queue or DEFAULT_QUEUE,
                    workspace=step.workspace, script=str(script), stem=stem,
                    exit_file=exit_file, report_subject=self._report_subject,
                    merlin=self._local.merlin,
                    env={**self._env, "TROUPE_STEP": step.name, "TROUPE_ATTEMPT": str(attempt),
                         "TROUPE_WORKSPACE": step.workspace, "TROUPE_JOB_KEY": request.key})
        self._waiting[exit_file] = (anyio.Event(), [], anyio.Event())
        self._exit_files[(request.actor, attempt)] = exit_file
        try:
            await self._queue_task(task.queue, ENCODER.encode(task), request.key)
        except Exception as exc:
            self._waiting.pop(exit_file, None)
            raise SubmitError(str(exc), step.name, retryable=True) from exc
        delay = min(10.0, self._lost_after)
        asyncio.get_running_loop().call_later(delay, self._check_served, task.queue)
        return JobHandle(step=request.actor, attempt=attempt, job_id=request.key,
                         backend=self.name)

    async def lookup(self, request: JobRequest) -> JobHandle | JobResult | None:
        """After an engine restart (or a standby's takeover), find an attempt by its
        claim: one whose worker recorded its exit is applied, one a worker claimed is
        adopted (its report, its claim's exit line, or its worker's silence for
        ``lost_after`` seconds ends the wait), and one no worker claimed yet is fenced
        off (claimed for the engine: a worker that takes its task later runs nothing), so
        that it never overlaps its re-run."""
        step, attempt = request.step, request.attempt
        exit_file = os.path.join(step.workspace, f".troupe.{attempt}.exit")
        try:
            fd = os.open(exit_file[: -len(".exit")] + ".pid",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            pass
        except OSError:
            return None  # the workspace is gone: it never ran here
        else:
            os.write(fd, CANCELLED.encode())
            os.close(fd)
            return None  # never started, and now it never will
        if _claimed_by_engine(exit_file):
            return None
        code = _read_exit(exit_file)
        if code is not None:
            return JobResult(outcome=JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED,
                             exit_code=code, detail="recorded in its claim by its worker")
        self._waiting[exit_file] = (anyio.Event(), [], anyio.Event())
        self._exit_files[(request.actor, attempt)] = exit_file
        self._seen[request.key] = self._clock()  # its worker's next heartbeat, or the loss
        return JobHandle(step=request.actor, attempt=attempt, job_id=request.key,
                         backend=self.name)

    def serving(self, queues: Sequence[str]) -> None:
        now = self._clock()
        for queue in queues:
            self._served[queue] = now
            self._unserved.discard(queue)

    def _check_served(self, queue: str) -> None:
        """Warn (once) if no live worker serves ``queue`` a little after a task went to it
        (Merlin#211: a queue nobody serves waits forever)."""
        seen = self._served.get(queue)
        if queue in self._unserved or (seen is not None and
                                       self._clock() - seen < self._lost_after):
            return
        self._unserved.add(queue)
        self._log.warning("queue_unserved", queue=queue, detail=(
            f"no live worker serves queue {queue!r}: its tasks wait until one does "
            f"(enginectl worker --queues {queue})"))

    def alive(self, keys: Sequence[str]) -> None:
        now = self._clock()
        for key in keys:
            self._seen[key] = now
            running = self._running.get(key)
            if running is not None:
                running.set()

    async def started(self, handle: JobHandle) -> None:
        """Return once a worker said it runs the task (or claimed it, or it ended, or the
        engine claimed it to cancel it): until then it waits in its queue, PENDING."""
        exit_file = self._exit_files.get((handle.step, handle.attempt))
        if exit_file is None:
            return
        # One event for either word: set by ``alive`` (it runs) and by ``report`` (it ended).
        ended, _, running = self._waiting[exit_file]
        self._running[handle.job_id] = running
        try:
            while not (running.is_set() or ended.is_set() or handle.job_id in self._seen):
                with anyio.move_on_after(self._poll):
                    await running.wait()
                if Path(exit_file[: -len(".exit")] + ".pid").exists():
                    return  # claimed (by a worker whose first word was lost, or to cancel)
        finally:
            self._running.pop(handle.job_id, None)

    def report(self, exit_file: str, exit_code: int) -> bool:
        waiting = self._waiting.get(exit_file)
        if waiting is None:
            return False
        waiting[1].append(exit_code)
        waiting[0].set()
        waiting[2].set()  # ended before a worker said it runs (a short task): started too
        return True

    async def wait(self, handle: JobHandle) -> JobResult:
        """Wait for the worker's report (or the exit file, should the report be lost)."""
        exit_file = self._exit_files[(handle.step, handle.attempt)]
        event, codes, _ = self._waiting[exit_file]
        try:
            while not event.is_set():
                with anyio.move_on_after(self._poll):
                    await event.wait()
                if not event.is_set():
                    code = _read_exit(exit_file)
                    if code is not None:
                        codes.append(code)
                        break
                    seen = self._seen.get(handle.job_id)
                    if seen is None and _claimed(exit_file):
                        # Claimed by a worker whose first "it runs" never came (it died at
                        # once): the loss clock starts now.
                        seen = self._seen[handle.job_id] = self._clock()
                    if seen is not None and self._clock() - seen > self._lost_after:
                        return JobResult(outcome=JobOutcome.NODE_FAIL, detail=(
                            f"its worker fell silent (no heartbeat for {self._lost_after:g} s)"))
        finally:
            self._waiting.pop(exit_file, None)
            self._exit_files.pop((handle.step, handle.attempt), None)
            self._seen.pop(handle.job_id, None)
        code = codes[0]
        if code == 199 and _claimed_by_engine(exit_file):
            return JobResult(outcome=JobOutcome.CANCELLED, exit_code=code,
                             detail="cancelled before a worker started it")
        outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
        return JobResult(outcome=outcome, exit_code=code)

    async def cancel(self, handle: JobHandle) -> None:
        """Claim the attempt (a worker that takes it later does not run it) and ask the
        workers to stop it if one runs it."""
        exit_file = self._exit_files.get((handle.step, handle.attempt))
        if exit_file is None:
            return
        pid_file = exit_file[: -len(".exit")] + ".pid"
        try:
            fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # a worker runs it: ask it to stop
            await self._publish(WORKER_CANCEL, WorkerCancel(
                event_id=new_event_id(), key=handle.job_id, grace=self._kill_grace))
            return
        except OSError:
            return
        os.write(fd, CANCELLED.encode())
        os.close(fd)
        self.report(exit_file, 199)  # it never runs: its wait ends now


def _read_exit(exit_file: str) -> int | None:
    """The exit status the worker appended to the attempt's claim (``exit N``)."""
    try:
        text = Path(exit_file[: -len(".exit")] + ".pid").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("exit "):
            try:
                return int(line[5:])
            except ValueError:
                return None
    return None


def _claimed(exit_file: str) -> bool:
    """A worker claimed the attempt: its pid file exists and is not the engine's. An
    empty one counts: its worker died between creating it and writing its name (the
    engine writes its own claim in the same turn as it creates it)."""
    try:
        return Path(exit_file[: -len(".exit")] + ".pid").read_text() != CANCELLED
    except OSError:
        return False


def _claimed_by_engine(exit_file: str) -> bool:
    try:
        return Path(exit_file[: -len(".exit")] + ".pid").read_text() == CANCELLED
    except OSError:
        return False
