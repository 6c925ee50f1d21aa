"""The shell around the sampled steps' books (``engine.machines.samples``).

A sampled step's "job" is its set of samples: ``run`` opens the book when the step is
submitted and reports the job's exit once the book says every sample has ended; each
open sample is a step record of its own, in the runtime's records, decided by the step
machine and run by the job shell like any step (its instance from :meth:`instance`).
What a sample's record publishes comes here instead of the bus (:meth:`published`): its
end goes to the book, which opens the next sample, and its state changes leave in
batches, one ``SamplesChanged`` per step and state every ``interval`` seconds, never an
event per sample. A sample that ends FINISHED gets Merlin's ``MERLIN_FINISHED`` marker;
one whose marker exists when the step starts (the study run again) is not run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING

import anyio
import structlog
from msgspec.structs import replace

from engine.machines import samples as book_machine
from engine.machines.samples import (
    CancelSample,
    OpenSample,
    SampleBook,
    SampleEnded,
    SamplesBegin,
    SamplesFinished,
    SamplesStop,
    sample_name,
    split_sample,
)
from engine.machines.step import StepRecord, new_record
from adapters.base import JobRequest
from engine.messages import (
    CancelRequested,
    Command,
    Event,
    JobExited,
    JobOutcome,
    JobStarted,
    PublishState,
    StepState,
    StudyOpened,
    SubmitFailed,
    new_event_id,
)
from engine.samplestatus import write_states
from engine.spec.samples import for_sample

if TYPE_CHECKING:
    from adapters.base import Adapter, Batches
    from engine.machines.policy import StepPolicy
    from engine.merlin import Samples
    from engine.spec.graph import StepInstance, StudyGraph

__all__ = ["MARKER", "SampleShell", "mark_finished"]

MARKER = "MERLIN_FINISHED"
_UNREPORTED = (StepState.WAITING, StepState.PENDING)  # a sample's way to RUNNING
DEFAULT_WINDOW = 512
ATTEMPTS_PER_RUN = 1000  # a sample's attempts in one run of its step, at most


def mark_finished(inst: StepInstance) -> None:
    """Write Merlin's ``MERLIN_FINISHED`` marker in a finished step's workspace (a
    marker that cannot be written is logged, never fatal)."""
    try:
        with open(os.path.join(inst.workspace, MARKER), "wb"):
            pass
    except OSError as exc:
        structlog.get_logger("troupe.samples").warning("marker_not_written", step=inst.name,
                                                       error=str(exc))


def _touch_all(paths: list[str]) -> list[str]:
    """Create each empty file; return the paths that could not be created."""
    failed = []
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError:
            failed.append(path)
    return failed


class SampleShell:
    """Runs the samples of a study's sampled steps.

    Args:
        graph: The study.
        samples: Its samples (read when the study started).
        records: The runtime's records (open samples' records live there too).
        policies: Each sampled step's policy, which each of its samples follows.
        send: Puts an event into the study's inbox.
        publish: Sends one batch: ``(step, state, sample ids, time)``.
        dry_run: Samples are written, not run.
        window: How many samples of one step may be open at once.
        adapter: The backend; if it runs a step's samples in batches
            (``Adapter.batches``), their first attempts go that way (see the class notes).
        limit_of: At most how many of a step's samples may run at once (0: no limit).
        resolve: The instance a sample's record name runs now.
        refuse: Why a sample's command may not run (``--strict``), or "".
        study_id: The study (jobs' keys are ``<study>/<step>#<i>/<attempt>``).

    In batches, a sample is no record while its first attempt runs: the backend starts
    it (at most ``limit_of(step)`` at once), and its start and end come back through
    callbacks. One that ends with 0 is FINISHED there and then; any other end becomes a
    record of its own, RUNNING that attempt (``slotless``: it held no throttle slot), to
    which the exit is handed, so that the step machine decides what follows (a retry, a
    restart, FAILED) as for any step. A step with a walltime is not run in batches (its
    samples' timers are the step machine's).
    """

    def __init__(
        self, graph: StudyGraph, samples: Samples, *,
        records: MutableMapping[str, StepRecord], policies: dict[str, StepPolicy],
        send: Callable[[str, Event], None],
        publish: Callable[[str, StepState, list[int], float], None],
        dry_run: bool = False, window: int = DEFAULT_WINDOW, clock: Callable[[], float] = time.time,
        adapter: Adapter | None = None, limit_of: Callable[[str], int] = lambda step: 0,
        resolve: Callable[[str], StepInstance] | None = None,
        refuse: Callable[[StepInstance], str] = lambda inst: "", study_id: str = "study",
    ) -> None:  # fmt: skip
        self.graph = graph
        self.samples = samples
        self._records = records
        self._policies = policies
        self._send = send
        self._publish = publish
        self._dry_run = dry_run
        self._window = window
        self._clock = clock
        self.books: dict[str, SampleBook] = {}
        self._ended: dict[str, anyio.Event] = {}
        self._results: dict[str, SamplesFinished] = {}
        self._pending: dict[tuple[str, StepState], list[int]] = {}
        self._numbers = {s.name: i for i, s in enumerate(s for s in graph.steps if s.sampled)}
        self._unsaved: set[str] = set()
        self._base: dict[str, int] = {}
        self._markers: list[str] = []
        self._log = structlog.get_logger("troupe.samples")
        self._adapter = adapter
        self._limit_of = limit_of
        self._resolve = resolve or self.instance
        self._refuse = refuse
        self._study_id = study_id
        self._batches: dict[str, Batches] = {}  # step -> its samples' batches
        self._keys: dict[str, tuple[str, int]] = {}  # a batched job's key -> its sample
        self._stopping: set[tuple[str, int]] = set()  # batched samples being cancelled

    # ------------------------------------------------------------------ a step's job

    def instance(self, name: str) -> StepInstance:
        """The instance a record name runs: a sample's own, or the graph's."""
        found = split_sample(name)
        if found is None:
            return self.graph.by_name[name]
        step, index = found
        return for_sample(self.graph.by_name[step], self.samples.table, self.samples.layout,
                          index)

    async def run(self, step: str, attempt: int) -> AsyncIterator[Event]:
        """The sampled step's job: every sample, then the job's exit."""
        book = book_machine.new_book(step, self.samples.n, window=self._window,
                                     merlin=self.graph.merlin)
        # A step run again after an engine restart numbers its samples' attempts anew, so
        # they never meet the files of an attempt of the engine before (a wrapper refuses
        # an attempt already claimed).
        self._base[step] = (attempt - 1) * ATTEMPTS_PER_RUN
        self.books[step] = book
        self._ended[step] = ended = anyio.Event()
        policy = self._policies.get(step)
        if self._adapter is not None and not self._dry_run and not (policy and policy.walltime):
            batches = self._adapter.batches(self.graph.by_name[step], limit=self._limit_of(step),
                                            started=self._started, ended=self._job_ended)
            if batches is not None:
                self._batches[step] = batches
        done = await anyio.to_thread.run_sync(self._marked, step)
        yield JobStarted(event_id=new_event_id(), job_id=f"{self.samples.n} samples",
                         time=self._clock())
        if done:
            self._log.info("samples_already_finished", step=step, count=len(done))
        self._apply(book_machine.decide(book, SamplesBegin(event_id=new_event_id(),
                                                           done=tuple(done))))
        await ended.wait()
        await self._write_markers()  # every finished sample's marker, before the step ends
        result = self._results.pop(step)
        yield JobExited(event_id=new_event_id(), exit_code=result.exit_code,
                        outcome=result.outcome, detail=result.detail, time=self._clock())

    def cancel(self, step: str) -> None:
        """Cancel a sampled step: no new sample, the open ones cancelled."""
        book = self.books.get(step)
        if book is not None:
            self._apply(book_machine.decide(book, SamplesStop(event_id=new_event_id())))

    def write_scripts(self, step: str, write: Callable[[StepInstance], object]) -> None:
        """``--dry``: write every sample's script."""
        for i in range(self.samples.n):
            write(self.instance(sample_name(step, i)))

    def _marked(self, step: str) -> list[int]:
        """Samples whose MERLIN_FINISHED marker exists (only if the step ran before)."""
        inst = self.graph.by_name[step]
        if not os.path.isdir(inst.workspace):
            return []
        layout = self.samples.layout
        return [i for i in range(self.samples.n)
                if os.path.exists(os.path.join(inst.workspace, layout.path(i), MARKER))]

    def _apply(self, cmds: list[Command]) -> None:
        opened: dict[str, list[JobRequest]] = {}
        stopped: dict[str, list[str]] = {}
        for cmd in cmds:
            match cmd:
                case OpenSample(step=step, index=i) if step in self._batches:
                    opened.setdefault(step, []).append(self._request(step, i))
                case OpenSample(step=step, index=i):
                    name = sample_name(step, i)
                    rec = new_record(name, 0, dry_run=self._dry_run,
                                     policy=self._policies.get(step))
                    base = self._base.get(step, 0)
                    self._records[name] = replace(rec, attempt=base) if base else rec
                    self._send(name, StudyOpened(event_id=new_event_id()))
                case CancelSample(step=step, index=i) if (
                        step in self._batches and sample_name(step, i) not in self._records):
                    self._stopping.add((step, i))
                    stopped.setdefault(step, []).append(self._key(step, i))
                case CancelSample(step=step, index=i):
                    self._send(sample_name(step, i), CancelRequested(
                        event_id=new_event_id(), reason=f"step {step} was cancelled"))
                case SamplesFinished(step=step):
                    self._save(step)
                    self._batches.pop(step, None)
                    self._results[step] = cmd
                    self._ended[step].set()
                    self._log.info("samples_ended", step=step, detail=cmd.detail)
                case _:
                    raise AssertionError(f"unhandled command {cmd!r}")
        for step, requests in opened.items():
            self._submit(step, requests)
        for step, keys in stopped.items():
            self._batches[step].cancel(keys)

    # ------------------------------------------------------------------ batches

    def _key(self, step: str, index: int) -> str:
        return f"{self._study_id}/{step}#{index}/{self._base.get(step, 0) + 1}"

    def _request(self, step: str, index: int) -> JobRequest:
        key = self._key(step, index)
        self._keys[key] = (step, index)
        return JobRequest(step=self._resolve(sample_name(step, index)), key=key, bulk=True,
                          attempt=self._base.get(step, 0) + 1, name=sample_name(step, index))

    def _submit(self, step: str, requests: list[JobRequest]) -> None:
        """Hand the requests to the step's batches (one refused by ``--strict`` becomes
        a record whose submission failed)."""
        ready = []
        for request in requests:
            why = self._refuse(request.step)
            if why:
                self._escalate(request.key, None, why)
            else:
                ready.append(request)
        if ready:
            self._batches[step].submit(ready)

    def _started(self, key: str, job_id: str) -> None:
        found = self._keys.get(key)
        if found is not None:
            self._pending.setdefault((found[0], StepState.RUNNING), []).append(found[1])

    def _job_ended(self, key: str, code: int | None, error: str) -> None:
        """A batched sample ended: FINISHED or CANCELLED here; else a record decides."""
        found = self._keys.get(key)
        if found is None:
            return
        if found in self._stopping:
            self._stopping.discard(found)
            del self._keys[key]
            self._sample_ended(*found, StepState.CANCELLED)
        elif code == 0:
            del self._keys[key]
            self._sample_ended(*found, StepState.FINISHED)
        else:
            self._escalate(key, code, error)

    def _escalate(self, key: str, code: int | None, error: str) -> None:
        """Make a batched sample's attempt a record (``slotless``) and hand it its end:
        its exit (RUNNING), or its failed submission (PENDING)."""
        step, index = self._keys.pop(key)
        name, now = sample_name(step, index), self._clock()
        rec = replace(new_record(name, 0, policy=self._policies.get(step)),
                      state=StepState.PENDING if code is None else StepState.RUNNING,
                      attempt=self._base.get(step, 0) + 1, slotless=True, submit_time=now,
                      start_time=now)
        self._records[name] = rec
        if code is None:
            self._send(name, SubmitFailed(event_id=new_event_id(), detail=error, retryable=False))
        else:
            self._send(name, JobExited(event_id=new_event_id(), exit_code=code, time=now,
                                       outcome=JobOutcome.FAILED))

    # ------------------------------------------------------------------ what samples say

    def published(self, cmd: PublishState) -> None:
        """A sample's record changed state: batch it; at its end, tell the book."""
        found = split_sample(cmd.step)
        assert found is not None
        step, index = found
        if cmd.state not in _UNREPORTED:
            self._pending.setdefault((step, cmd.state), []).append(index)
        if not cmd.final:
            return
        self._records.pop(cmd.step, None)
        self._sample_ended(step, index, cmd.state, soft=cmd.soft, reported=True)

    def _sample_ended(self, step: str, index: int, state: StepState, *, soft: bool = False,
                      reported: bool = False) -> None:
        """Tell the book; a FINISHED sample's marker is written soon, off the loop."""
        if not reported:
            self._pending.setdefault((step, state), []).append(index)
        if state == StepState.FINISHED:
            ws = self.graph.by_name[step].workspace
            self._markers.append(os.path.join(ws, self.samples.layout.path(index), MARKER))
        book = self.books.get(step)
        if book is not None:
            self._unsaved.add(step)
            self._apply(book_machine.decide(book, SampleEnded(
                event_id=new_event_id(), index=index, state=state, soft=soft)))

    def drain(self) -> list[tuple[str, StepState, list[int], float]]:
        """What the samples did since the last drain, one batch per step and state."""
        pending, self._pending = self._pending, {}
        now = self._clock()
        return [(step, state, ids, now) for (step, state), ids in pending.items()]

    def flush(self) -> None:
        """Send what :meth:`drain` gives."""
        for batch in self.drain():
            self._publish(*batch)

    async def run_flusher(self, interval: float = 0.2, save_every: int = 5) -> None:
        """Flush every ``interval`` seconds, and save the states files every
        ``save_every`` flushes (until cancelled; the owner flushes last)."""
        turn = 0
        while True:
            await anyio.sleep(interval)
            if self._pending:
                self.flush()
            if self._markers:
                await self._write_markers()
            turn += 1
            if turn % save_every == 0:
                for step in list(self._unsaved):
                    self._save(step)

    async def _write_markers(self) -> None:
        """Write the pending ``MERLIN_FINISHED`` markers in a worker thread (a marker
        that cannot be written is logged, never fatal)."""
        markers, self._markers = self._markers, []
        failed = await anyio.to_thread.run_sync(_touch_all, markers)
        if failed:
            self._log.warning("markers_not_written", count=len(failed), first=failed[0])

    def _save(self, step: str) -> None:
        """Write ``step``'s states file (``engine.samplestatus``); a failure is logged."""
        self._unsaved.discard(step)
        try:
            write_states(self.graph.study_dir, self._numbers[step], bytes(self.books[step].codes))
        except OSError as exc:
            self._log.warning("sample_states_not_written", step=step, error=str(exc))

    def sample_states(self, step: str) -> list[tuple[str, str]]:
        """Each sample's path and state (``--per-sample-status``)."""
        book = self.books.get(step)
        if book is None:
            return []
        layout = self.samples.layout
        return [(layout.path(i), book.state_of(i)) for i in range(book.n)]

    def counts(self, step: str) -> dict[str, int]:
        """A sampled step's samples per state now (open ones as RUNNING)."""
        book = self.books.get(step)
        if book is None:
            return {}
        out = dict(book.counts)
        if book.open:
            out["RUNNING"] = book.open
        if book.n > book.next:
            out["INITIALIZED"] = book.n - book.next
        return out
