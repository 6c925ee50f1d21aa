"""The runtime of one study: its actors, wired to the bus, the store and the adapter.

Step actors are records, not tasks: an idle step costs a dict entry, never a coroutine or
a subscription. The pieces, each in its own module:
  * the pure machines decide (``engine.machines.step`` per step instance,
    ``engine.machines.supervisor`` for the study: throttles, cancel, stop, races, the end);
  * the loop (``engine.actors._loop``) holds the inbox, feeds each event to its machine
    and carries out the commands;
  * the router (``engine.actors.router``) turns the study's terminal events on NATS into
    events for the children and the supervisor;
  * the job shell (``engine.actors.jobs``) submits, waits for and cancels jobs;
  * the persister (``engine.actors.persist``) stores every transition (under ``serve``);
  * the status writer (``engine.status``) keeps ``status.csv`` current;
  * control requests are answered by ``engine.actors.control``.

``StudyRuntime`` owns the records, connects these pieces, and carries out the commands
that touch the bus (``PublishState``), the adapter and the study's outcome.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec
import structlog

from adapters.base import Adapter, JobHandle
from engine import subjects
from engine.actors._loop import ActorLoop
from engine.actors.control import serve_control
from engine.actors.jobs import JobShell
from engine.actors.race import run_race_check
from engine.actors.router import Router
from engine.actors.samples import SampleShell, mark_finished
from engine.bus import Bus
from engine.machines import step as step_machine
from engine.machines import supervisor as sup_machine
from engine.machines.policy import StepPolicy
from engine.machines.race import new_race_book, substitute
from engine.machines.recovery import Recovered, initial_records, replay_plan
from engine.machines.samples import SEP, set_policy
from engine.machines.supervisor import SUPERVISOR, Target
from engine.machines.wiring import ROUTES
from engine.messages import (
    ACTIVE_STATES,
    FAILURE_STATES,
    TERMINAL_STATES,
    CacheHit,
    CancelJob,
    CancelRequested,
    CheckRace,
    Command,
    EndStudy,
    Event,
    KillAllJobs,
    PublishState,
    SamplesChanged,
    StepState,
    StepStateChanged,
    StepWarning,
    StopRequested,
    StopStudy,
    StudyCancelRequested,
    StudyEnded,
    StudyOpened,
    StudyStarted,
    StudyState,
    SubmissionsPaused,
    SubmitJob,
    ThrottleChanged,
    WriteScript,
    new_event_id,
)
from engine.spec.graph import StepInstance, StudyGraph
from engine.spec.samples import resolve_counted
from engine.status import StatusTable, StatusWriter

if TYPE_CHECKING:
    from engine.actors.persist import Persister
    from engine.merlin import Samples
    from engine.store import Store

__all__ = ["StudyRuntime"]


class StudyRuntime:
    """Runs one expanded study to completion on one adapter.

    Args:
        graph: The expanded study.
        study_id: The study's id (used in subjects and events).
        bus: A connected bus.
        adapter: The backend that runs the steps.
        throttle: Maximum steps running at once (0 = unlimited); ignored if ``limits``.
        limits: Throttle limits per scope (see ``engine.settings.throttle_limits``).
        policies: Each step's policy (default: Maestro's defaults, global scope only).
        dry_run: Write scripts and mark steps DRYRUN without running anything.
        status_path: Where to keep ``status.csv`` (None: don't write one).
        clock: Returns seconds since the epoch (injected for tests).
        status_interval: Minimum seconds between two status.csv rewrites; transitions in
            between are coalesced into the next write.
        store: Durable state; with it every transition is stored and every submission
            waits until its intent is stored.
        recovered: Records rebuilt from the store (engine restart, ``restart``).
        cached: Steps whose earlier results were reused (they become CACHED at start).
        worker: The engine's id, recorded with each step.
        samples: The samples of a Merlin study whose steps use them
            (``engine.actors.samples``).
        per_sample_status: status.csv lists each sample (else each state's count).
        strict: A command about to run with an unresolved ``$(TOKEN)`` fails its step
            (else a warning, once per spec step and token).
        engine_slots: The engine-wide limit shared by every study of a ``serve``
            (``--max-running``), or None.
    """

    def __init__(
        self,
        graph: StudyGraph,
        *,
        study_id: str,
        bus: Bus,
        adapter: Adapter,
        throttle: int = 0,
        limits: dict[str, int] | None = None,
        policies: dict[str, StepPolicy] | None = None,
        dry_run: bool = False,
        status_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        status_interval: float = 0.1,
        store: Store | None = None,
        recovered: Recovered | None = None,
        cached: Iterable[str] = (),
        worker: str = "",
        samples: Samples | None = None,
        per_sample_status: bool = False,
        strict: bool = False,
        engine_slots: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.graph = graph
        self.study_id = study_id
        self.bus = bus
        self.adapter = adapter
        self.dry_run = dry_run
        self.clock = clock
        self.recovered = recovered
        self.cached = list(cached)
        self.worker = worker
        self.outcome: StudyState | None = None
        self.counts: dict[str, int] = {}
        self._order = graph.bfs_order()
        if recovered is not None:
            self.records = recovered.records
        else:
            self.records = initial_records(graph, policies or {}, dry_run=dry_run)
        # Steps per state, kept as the machines move them (a status request of a
        # 100,000-step study must not count them all): samples' own records are not steps.
        self._per_state = Counter(r.state for n, r in self.records.items() if SEP not in n)
        self.supervisor = sup_machine.new_supervisor(
            tuple(self._order), limits=limits if limits is not None else {"global": throttle},
            races=new_race_book(graph),
            running=recovered.running if recovered is not None else None)
        self.persister: Persister | None = None
        if store is not None:  # (imported here: `run`, which stores nothing, never needs it)
            from engine.actors import persist

            self.persister = persist.Persister(store)
        self._loop = ActorLoop(decide=self._decide, execute=self._execute,
                               routes={**ROUTES, StopStudy: self._stop_requested})
        self._router = Router(study_id, graph.children, self._loop.send, url=bus.url)
        self._samples = self._sample_shell(samples)
        self._jobs = JobShell(adapter, graph, study_id=study_id, records=self.records,
                              resolve=self._resolve, persister=self.persister, clock=clock,
                              warn=self._warn, strict=strict, engine_slots=engine_slots,
                              intent_ahead=None if self.persister is None else self._intent_ahead)
        self._status = None if status_path is None else StatusWriter(
            status_path, StatusTable(self._order, graph.by_name, samples=self._samples,
                                     per_sample=per_sample_status), self.records,
            clock=clock, interval=status_interval)
        self._log = structlog.get_logger("troupe.study").bind(study_id=study_id)
        self._debug = logging.getLogger("troupe.study").isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------ public API

    @property
    def order(self) -> list[str]:
        """Step instance names in status order (BFS from the roots)."""
        return self._order

    def state_counts(self) -> dict[str, int]:
        """Steps per state now (a sampled step counts once)."""
        return {s.value: n for s in StepState if (n := self._per_state[s])}

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel the whole study: every step not yet terminal becomes CANCELLED.

        A second call SIGKILLs whatever is still running instead of waiting for the
        adapter's grace period.
        """
        self._loop.send(SUPERVISOR, StudyCancelRequested(event_id=new_event_id(), reason=reason))

    def cancel_steps(self, glob: str, reason: str = "cancelled by request") -> int:
        """Cancel the steps whose instance name or spec step name matches ``glob``; their
        descendants follow through propagation, the rest of the study goes on.

        Returns:
            How many step instances matched.
        """
        matched = [s.name for s in self.graph.steps
                   if fnmatch.fnmatchcase(s.name, glob) or fnmatch.fnmatchcase(s.step, glob)]
        for name in matched:
            self._loop.send(name, CancelRequested(event_id=new_event_id(), reason=reason))
        return len(matched)

    def set_throttle(self, limit: int, scope: str = "global") -> None:
        """Change a throttle while the study runs (0 = unlimited)."""
        self._loop.send(SUPERVISOR, ThrottleChanged(event_id=new_event_id(), limit=limit,
                                                    scope=scope))

    def pause_submissions(self, paused: bool = True) -> None:
        """Grant no throttle slot (so submit nothing new) while ``paused``."""
        self._loop.send(SUPERVISOR, SubmissionsPaused(event_id=new_event_id(), paused=paused))

    def active_jobs(self) -> dict[tuple[str, int], JobHandle]:
        """The jobs submitted and not yet ended, by ``(step, attempt)``."""
        return self._jobs.active_jobs()

    def active_steps(self) -> dict[str, step_machine.StepRecord]:
        """The steps in PENDING or RUNNING, with their records."""
        return {n: r for n, r in self.records.items() if r.state in ACTIVE_STATES}

    async def wait_stored(self) -> None:
        """Return once every transition so far is in the store (at once without one)."""
        if self.persister is not None:
            await self.persister.flush()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> StudyState:
        """Run the study until every step is terminal; return the study's final state.

        ``task_status.started()`` is called once the router listens, so a caller using
        ``TaskGroup.start`` knows every actor can hear its dependencies.

        Raises:
            BusError: the connection to the NATS server was lost for good.
        """
        async with anyio.create_task_group() as tg:
            self._loop.attach(tg)
            async with self.bus.subscribe(
                    *subjects.step_endings(self.study_id, TERMINAL_STATES)) as events:
                tg.start_soon(lambda: self._router.run(events, done=self._ended))
                await tg.start(serve_control, self.bus, self)
                if self.adapter.takes_reports:
                    await tg.start(lambda task_status: self._jobs.listen_reports(
                        self.bus, task_status=task_status))
                if self._status is not None:
                    tg.start_soon(self._status.run)
                if self._samples is not None:
                    tg.start_soon(self._samples.run_flusher)
                await self._announce()
                if self.persister is not None:
                    tg.start_soon(self.persister.run)
                task_status.started()
                self._open()
                await self._loop.run(until=self._ended)
                await self.wait_stored()  # every step's final entry is stored
                tg.cancel_scope.cancel()
        await self._finish()
        assert self.outcome is not None
        return self.outcome

    # ------------------------------------------------------------------ the run

    def _ended(self) -> bool:
        return self.outcome is not None

    async def _announce(self) -> None:
        await self.bus.publish(
            subjects.study_event(self.study_id, "started"),
            StudyStarted(
                event_id=new_event_id(), study_id=self.study_id, name=self.graph.name,
                study_dir=self.graph.study_dir, spec_path=self.graph.spec_path,
                steps=len(self.graph.steps), time=self.clock(), dry_run=self.dry_run,
            ),
        )
        self._log.info("study_started", steps=len(self.graph.steps), dry_run=self.dry_run)

    def _open(self) -> None:
        """Replay what recovery found, mark reused steps CACHED, open the roots."""
        send = self._loop.send
        if self.recovered is not None:
            rec = self.recovered
            self._router.already_delivered(rec.terminal)
            for target, event in replay_plan(rec, self.graph, now=self.clock()):
                send(target, event)
            for handle in rec.adopted.values():
                self._loop.spawn(handle.step, self._jobs.adopted(handle))
            self._log.info("study_resumed", terminal=len(rec.terminal),
                           adopted=len(rec.adopted), ended=len(rec.ended), lost=len(rec.lost))
        for name in self.cached:
            send(name, CacheHit(event_id=new_event_id()))
        for inst in self.graph.steps:
            if not inst.parents and self.records[inst.name].state == StepState.INITIALIZED:
                send(inst.name, StudyOpened(event_id=new_event_id()))
        if not self.graph.steps:
            self.outcome = StudyState.FINISHED

    async def _finish(self) -> None:
        with anyio.CancelScope(shield=True):
            for step, state, ids, now in self._samples.drain() if self._samples else ():
                await self.bus.publish_event(subjects.samples_event(self.study_id, step, state),
                                             self._samples_changed(step, state, ids, now))
            with anyio.move_on_after(10):
                await self.adapter.cleanup()  # what the steps left running (daemons)
            if self._status is not None:
                self._status.write_now()
            if self.persister is not None:
                with anyio.move_on_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self.persister.run)
                        await self.persister.flush()
                        tg.cancel_scope.cancel()
                if self.persister.failed:  # each was logged when given up
                    self._log.error("steps_not_stored", count=len(self.persister.failed),
                                    steps=sorted({f.step for f in self.persister.failed})[:10])
            ended = StudyEnded(
                event_id=new_event_id(), study_id=self.study_id,
                state=self.outcome or StudyState.FAILURE, time=self.clock(), counts=self.counts,
            )
            subject = subjects.study_event(self.study_id, "ended")
            if self.bus.durable:
                # Its acknowledgement proves every earlier event of the study stored.
                await self.bus.publish_event(subject, ended, fence=True)
                await self.bus.wait_persisted(ended.event_id)
            else:
                await self.bus.publish(subject, ended)
                await self.bus.flush()
            self._log.info("study_ended", state=ended.state.value, counts=self.counts)

    # ------------------------------------------------------------------ the machines

    def _decide(self, target: Target, event: Event) -> list[Command]:
        now = self.clock()
        if target is SUPERVISOR:
            self.supervisor, cmds = sup_machine.decide(self.supervisor, event, now=now)
            return cmds
        rec = self.records.get(target)
        if rec is None and SEP in target:  # a sample that has ended (its record is gone)
            return []
        assert rec is not None, f"no step record {target!r}"
        self.records[target], cmds = step_machine.decide(rec, event, now=now)
        if (state := self.records[target].state) != rec.state and SEP not in target:
            self._per_state[rec.state] -= 1
            self._per_state[state] += 1
        return cmds

    def _stop_requested(self, cmd: StopStudy, cause: str) -> tuple[Target, Event]:
        self._log.warning("study_stopping", reason=cmd.reason)
        return SUPERVISOR, StopRequested(event_id=new_event_id(), cause_id=cause,
                                         step=cmd.step, reason=cmd.reason)

    def _execute(self, cmd: Command, cause: str) -> Awaitable[None] | None:
        """Carry out a command for the shells; publishing is awaited by the loop."""
        match cmd:
            case PublishState() if self._samples is not None and SEP in cmd.step:
                self._samples.published(cmd)  # (a sample's: batched, nothing to await)
                if self._status is not None:
                    self._status.changed()
            case PublishState():
                return self._publish(cmd, cause)
            case SubmitJob(step=s, attempt=a) if s in self._sampled:
                assert self._samples is not None
                self._loop.spawn(s, self._samples.run(s, a))
            case SubmitJob(step=s, attempt=a, restart=restart):
                self._loop.spawn(s, self._jobs.run(s, a, restart))
            case CancelJob(step=s) if s in self._sampled:
                assert self._samples is not None
                self._samples.cancel(s)
            case CancelJob(step=s, attempt=a):
                self._loop.start_soon(self._jobs.cancel, s, a)
            case WriteScript(step=s) if s in self._sampled:
                assert self._samples is not None
                self._samples.write_scripts(s, self.adapter.write_script)
            case WriteScript(step=s):
                self.adapter.write_script(self._resolve(s))
            case CheckRace(step=s):
                ws = self.graph.by_name[s].workspace
                self._loop.spawn(SUPERVISOR, run_race_check(cmd, ws))
            case KillAllJobs():
                self._jobs.kill_all_now()
            case EndStudy(state=state, counts=counts):
                self.outcome, self.counts = state, counts
            case _:
                raise AssertionError(f"unhandled command {cmd!r}")
        return None

    def _intent_ahead(self, name: str) -> None:
        """Store the intent of ``name``'s next attempt now (a chain's child, prepared
        while its parent runs); its state stays as it is (``StepEntry.from_record``)."""
        assert self.persister is not None
        self.persister.put_record(self.records[name], study_id=self.study_id,
                                  worker=self.worker, ahead=True)

    def _resolve(self, name: str) -> StepInstance:
        """The instance a record runs now: ``$(race.<group>)`` of decided races resolved,
        a sample's values, the tokens that count the samples."""
        if self._samples is None:
            inst = self.graph.by_name[name]
        else:
            inst = self._samples.instance(name)
            if not inst.sampled:  # (a sample's were substituted with its values)
                layout = self._samples.samples.layout
                inst = msgspec.structs.replace(inst, cmd=resolve_counted(inst.cmd, layout),
                                               restart=resolve_counted(inst.restart, layout))
        return substitute(inst, self.supervisor.races.winners, self.graph.by_name)

    def _sample_shell(self, samples: Samples | None) -> SampleShell | None:
        """The samples' shell, if steps use samples; their records' policies become the
        policy of their set (``engine.machines.samples.set_policy``)."""
        self._sampled = frozenset(s.name for s in self.graph.steps if s.sampled)
        if not self._sampled:
            return None
        if samples is None:
            raise ValueError("a study whose steps use samples needs them read first")
        own = {n: self.records[n].policy for n in self._sampled}
        for n in self._sampled:
            self.records[n] = msgspec.structs.replace(self.records[n],
                                                      policy=set_policy(own[n]))
        return SampleShell(self.graph, samples, records=self.records, policies=own,
                           send=self._loop.send, publish=self._publish_samples,
                           dry_run=self.dry_run, clock=self.clock, adapter=self.adapter,
                           limit_of=lambda step: self._limit_of(own[step]),
                           resolve=self._resolve, study_id=self.study_id,
                           refuse=lambda inst: self._jobs.refusal(inst))

    def _limit_of(self, policy: StepPolicy) -> int:
        """The smallest throttle limit of a policy's scopes (0: none of them has one)."""
        limits = [n for n in (self.supervisor.limits.get(s, 0) for s in policy.scopes) if n > 0]
        return min(limits, default=0)

    def _warn(self, step: str, message: str) -> None:
        self._log.warning("step_warning", step=step, message=message)
        msg = StepWarning(event_id=new_event_id(), study_id=self.study_id, step=step,
                          message=message, time=self.clock())
        self._loop.start_soon(self.bus.publish_event,
                              subjects.step_warning(self.study_id, step), msg)

    def _samples_changed(self, step: str, state: StepState, ids: list[int],
                         now: float) -> SamplesChanged:
        return SamplesChanged(event_id=new_event_id(), study_id=self.study_id, step=step,
                              state=state, samples=tuple(ids), time=now)

    def _publish_samples(self, step: str, state: StepState, ids: list[int], now: float) -> None:
        self._loop.start_soon(self.bus.publish_event,
                              subjects.samples_event(self.study_id, step, state),
                              self._samples_changed(step, state, ids, now))

    async def _publish(self, cmd: PublishState, cause: str) -> None:
        msg = StepStateChanged(
            event_id=new_event_id(), cause_id=cause, study_id=self.study_id, step=cmd.step,
            attempt=cmd.attempt, state=cmd.state, previous=cmd.previous, time=cmd.time,
            job_id=cmd.job_id, exit_code=cmd.exit_code, kind=cmd.kind,
            retryable=cmd.retryable, reason=cmd.reason, final=cmd.final, soft=cmd.soft,
            lost_race=cmd.lost_race,
        )
        await self.bus.publish_event(subjects.step_event(self.study_id, cmd.step, cmd.state), msg)
        if self.persister is not None:
            # The entry shows the step as it stands now (a later command of the same
            # dispatch may have moved it on): the store keeps the latest.
            self.persister.put_record(self.records[cmd.step], study_id=self.study_id,
                                      worker=self.worker, final=cmd.final, soft=cmd.soft)
        if self._status is not None:
            self._status.changed()
        if (self.graph.merlin and cmd.final and cmd.state == StepState.FINISHED
                and cmd.step not in self._sampled):
            mark_finished(self.graph.by_name[cmd.step])
        # Every transition is on the bus already; the log keeps failures at INFO (and the
        # rest at DEBUG, when that is on: asking structlog costs more than the check).
        if cmd.state in FAILURE_STATES or self._debug:
            emit = self._log.info if cmd.state in FAILURE_STATES else self._log.debug
            emit(
                "step_state_changed", step=cmd.step, state=cmd.state.value,
                attempt=cmd.attempt, job_id=cmd.job_id or None, exit_code=cmd.exit_code,
                reason=cmd.reason or None,
            )
