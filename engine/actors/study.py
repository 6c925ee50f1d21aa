"""The async shell around one study's actors: step actors, supervisor and adapter.

Step actors are records, not tasks: an idle step costs a dict entry, never a coroutine or
a subscription. One wildcard subscription per study (``subjects.step_events``) receives
every step event from NATS; the router turns a terminal event of step P into a
``DependencyEnded`` for each child of P (the actors that listen on P's completion
subject) and a ``StepEnded`` for the supervisor. A single dispatcher drains the study's
inbox (its mailbox), feeds each event to the pure ``decide`` of its target, and carries
out the returned commands: publish on the bus, ask or release a throttle slot, submit or
cancel a job. Slow commands (a job's whole life) run in child tasks that report back into
the inbox as events (``JobStarted``, ``JobExited``, ``SubmitFailed``).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import structlog

from adapters.base import Adapter, JobHandle, JobRequest, SubmitError
from engine import subjects
from engine.bus import Bus
from engine.errors import BusError
from engine.machines import step as step_machine
from engine.machines import supervisor as sup_machine
from engine.actors.persist import Persister
from engine.actors.control import answer_control
from engine.actors.race import Races
from engine.actors.recovery import Recovered, condition_args
from engine.machines.policy import StepPolicy
from engine.store import StepEntry, Store
from engine.messages import (
    FAILURE_STATES,
    TERMINAL_STATES,
    AnyBusMessage,
    CancelJob,
    CancelRequested,
    Command,
    DependencyEnded,
    Event,
    GrantSlot,
    JobExited,
    JobReported,
    JobStarted,
    PublishState,
    ReleaseSlot,
    RequestSlot,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    SlotWithdrawn,
    StartTimer,
    StepEnded,
    StepState,
    StepStateChanged,
    StopStudy,
    StudyCancelRequested,
    StudyEnded,
    StudyFinished,
    StudyOpened,
    StudyStarted,
    StudyState,
    SubmitFailed,
    SubmitJob,
    ThrottleChanged,
    TimerFired,
    WithdrawSlotRequest,
    WriteScript,
    new_event_id,
)
from engine.spec.graph import StudyGraph
from engine.status import StatusTable, write_status

__all__ = ["StudyRuntime"]


def _lost_race(state: StepState, reason: str) -> bool:
    """A race member cancelled because another won: not a cancellation of the study."""
    return state == StepState.CANCELLED and reason.startswith("race lost")


_PREPARE_AHEAD = 4  # children prepared ahead per started step, at most
_SUPERVISOR = ""  # inbox target of supervisor events (no step has an empty name)


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
        worker: The engine's id, recorded with each step.
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
        worker: str = "",
    ) -> None:
        self.graph = graph
        self.study_id = study_id
        self.bus = bus
        self.adapter = adapter
        self.dry_run = dry_run
        self.status_path = status_path
        self.clock = clock
        self.status_interval = status_interval
        policies = policies or {}
        self.records = {
            s.name: step_machine.new_record(s.name, len(s.parents), dry_run=dry_run,
                                            policy=policies.get(s.name),
                                            **condition_args(s, graph))
            for s in graph.steps
        }
        self.supervisor = sup_machine.SupervisorState(
            total=len(graph.steps), limits=limits if limits is not None else {"global": throttle}
        )
        self.recovered = recovered
        if recovered is not None:
            self.records = recovered.records
            self.supervisor = msgspec.structs.replace(self.supervisor,
                                                      running=dict(recovered.running))
        self.races = Races(graph, {g: c.get("check", "") for g, c in
                                   (graph.troupe.get("races") or {}).items()})
        self.store = store
        self.persister = Persister(store) if store is not None else None
        self.worker = worker
        self.outcome: StudyState | None = None
        self.counts: dict[str, int] = {}
        self._order = graph.bfs_order()
        self._table = StatusTable(self._order, graph.by_name)
        self._send, self._recv = anyio.create_memory_object_stream[tuple[str, Event]](math.inf)
        self._handles: dict[tuple[str, int], JobHandle] = {}
        self._cancel_pending: set[tuple[str, int]] = set()
        self._terminal_seen: set[str] = set()
        self._dirty = anyio.Event()
        self._cancel_count = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._log = structlog.get_logger("troupe.study").bind(study_id=study_id)
        self._debug = logging.getLogger("troupe.study").isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------ public API

    @property
    def order(self) -> list[str]:
        """Step instance names in status order (BFS from the roots)."""
        return self._order

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel the whole study: every step not yet terminal becomes CANCELLED.

        A second call SIGKILLs whatever is still running instead of waiting for the
        adapter's grace period.
        """
        self._cancel_count += 1
        if self._cancel_count > 1:
            kill = getattr(self.adapter, "kill_all_now", None)
            if kill is not None:
                kill()
            return
        self._send.send_nowait((_SUPERVISOR, StudyCancelRequested(event_id=new_event_id())))
        for name in self._order:
            self._send.send_nowait((name, CancelRequested(event_id=new_event_id(), reason=reason)))

    def cancel_steps(self, glob: str, reason: str = "cancelled by request") -> int:
        """Cancel the steps whose instance name or spec step name matches ``glob``; their
        descendants follow through propagation, the rest of the study goes on.

        Returns:
            How many step instances matched.
        """
        matched = [s.name for s in self.graph.steps
                   if fnmatch.fnmatchcase(s.name, glob) or fnmatch.fnmatchcase(s.step, glob)]
        for name in matched:
            self._send.send_nowait((name, CancelRequested(event_id=new_event_id(), reason=reason)))
        return len(matched)

    def _cancel_exact(self, names: list[str], reason: str) -> None:
        for name in names:
            self._send.send_nowait((name, CancelRequested(event_id=new_event_id(), reason=reason)))

    def set_throttle(self, limit: int, scope: str = "global") -> None:
        """Change a throttle while the study runs (0 = unlimited)."""
        self._send.send_nowait(
            (_SUPERVISOR, ThrottleChanged(event_id=new_event_id(), limit=limit, scope=scope))
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> StudyState:
        """Run the study until every step is terminal; return the study's final state.

        ``task_status.started()`` is called once the router listens, so a caller using
        ``TaskGroup.start`` knows every actor can hear its dependencies.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            async with self.bus.subscribe(
                    *subjects.step_endings(self.study_id, TERMINAL_STATES)) as events:
                tg.start_soon(self._route, events)
                await tg.start(self._serve_control)
                if hasattr(self.adapter, "report"):
                    await tg.start(self._listen_reports)
                if self.status_path is not None:
                    tg.start_soon(self._status_writer)
                await self.bus.publish(
                    subjects.study_event(self.study_id, "started"),
                    StudyStarted(
                        event_id=new_event_id(), study_id=self.study_id, name=self.graph.name,
                        study_dir=self.graph.study_dir, spec_path=self.graph.spec_path,
                        steps=len(self.graph.steps), time=self.clock(), dry_run=self.dry_run,
                    ),
                )
                self._log.info("study_started", steps=len(self.graph.steps), dry_run=self.dry_run)
                if self.persister is not None:
                    tg.start_soon(self.persister.run)
                task_status.started()
                if self.recovered is not None:
                    await self._resume(self.recovered)
                for inst in self.graph.steps:
                    if not inst.parents and self.records[inst.name].state == StepState.INITIALIZED:
                        self._send.send_nowait((inst.name, StudyOpened(event_id=new_event_id())))
                if not self.graph.steps:
                    self.outcome = StudyState.FINISHED
                async for target, event in self._recv:
                    await self._dispatch(target, event)
                    if self.outcome is not None:
                        break
                if self.persister is not None:
                    await self.persister.flush()  # every step's final entry is stored
                tg.cancel_scope.cancel()
        await self._finish()
        assert self.outcome is not None
        return self.outcome

    # ------------------------------------------------------------------ internals

    async def _finish(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.status_path is not None:
                self._write_status_now()
            if self.persister is not None:
                with anyio.move_on_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self.persister.run)
                        await self.persister.flush()
                        tg.cancel_scope.cancel()
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

    async def _route(self, events: AsyncIterator[AnyBusMessage]) -> None:
        """Deliver each step's first terminal event to its children and the supervisor."""
        children = self.graph.children
        send = self._send.send_nowait
        async for msg in events:
            if not isinstance(msg, StepStateChanged) or msg.study_id != self.study_id:
                continue
            if not msg.final or msg.step in self._terminal_seen:
                continue
            if msg.step not in children:
                continue  # not one of ours (e.g. another engine on the same subject)
            self._terminal_seen.add(msg.step)
            if msg.state == StepState.FINISHED and msg.step in self.races.group:
                assert self._tg is not None
                self._tg.start_soon(self.races.finished, msg.step, self._cancel_exact)
            for child in children[msg.step]:
                send((child, DependencyEnded(
                    event_id=new_event_id(), cause_id=msg.event_id,
                    dependency=msg.step, state=msg.state, soft=msg.soft,
                )))
            send((_SUPERVISOR, StepEnded(
                event_id=new_event_id(), cause_id=msg.event_id, step=msg.step, state=msg.state,
                benign=_lost_race(msg.state, msg.reason),
            )))
        if self.outcome is None:
            # The subscription ended: the connection is closed for good. Without the bus
            # no completion reaches anyone; say so instead of waiting forever.
            raise BusError("lost the connection to the NATS server while the study ran",
                           self.bus.url)

    async def _dispatch(self, target: str, event: Event) -> None:
        """Feed ``event`` to its actor and carry out the commands, depth first."""
        work: deque[tuple[Command, str]] = deque()
        self._decide(target, event, work)
        while work:
            cmd, cause = work.popleft()
            match cmd:
                case PublishState():
                    await self._publish(cmd, cause)
                case RequestSlot(step=s, scopes=scopes):
                    self._decide(_SUPERVISOR, SlotRequested(event_id=cause, step=s, scopes=scopes),
                                 work)
                case ReleaseSlot(step=s, scopes=scopes):
                    self._decide(_SUPERVISOR, SlotReleased(event_id=cause, step=s, scopes=scopes),
                                 work)
                case WithdrawSlotRequest(step=s):
                    self._decide(_SUPERVISOR, SlotWithdrawn(event_id=cause, step=s), work)
                case GrantSlot(step=s):
                    self._decide(s, SlotGranted(event_id=new_event_id(), cause_id=cause), work)
                case SubmitJob(step=s, attempt=a, restart=restart):
                    assert self._tg is not None
                    self._tg.start_soon(self._run_job, s, a, restart)
                case StartTimer(step=s, name=timer, attempt=a, delay=delay):
                    assert self._tg is not None
                    self._tg.start_soon(self._timer, s, timer, a, delay)
                case StopStudy(reason=reason):
                    self._log.warning("study_stopping", reason=reason)
                    self._stop(reason)
                case CancelJob(step=s, attempt=a):
                    assert self._tg is not None
                    self._tg.start_soon(self._cancel_job, s, a)
                case WriteScript(step=s):
                    self.adapter.write_script(self.graph.by_name[s])
                case StudyFinished(state=state, counts=counts):
                    self.outcome, self.counts = state, counts
                case _:
                    raise AssertionError(f"unhandled command {cmd!r}")

    def _decide(self, target: str, event: Event, work: deque[tuple[Command, str]]) -> None:
        now = self.clock()
        if target == _SUPERVISOR:
            self.supervisor, cmds = sup_machine.decide(self.supervisor, event, now=now)
        else:
            rec, cmds = step_machine.decide(self.records[target], event, now=now)
            self.records[target] = rec
        cause = event.event_id
        work.extend((c, cause) for c in cmds)

    async def _publish(self, cmd: PublishState, cause: str) -> None:
        msg = StepStateChanged(
            event_id=new_event_id(), cause_id=cause, study_id=self.study_id, step=cmd.step,
            attempt=cmd.attempt, state=cmd.state, previous=cmd.previous, time=cmd.time,
            job_id=cmd.job_id, exit_code=cmd.exit_code, kind=cmd.kind,
            retryable=cmd.retryable, reason=cmd.reason, final=cmd.final, soft=cmd.soft,
        )
        await self.bus.publish_event(subjects.step_event(self.study_id, cmd.step, cmd.state), msg)
        if self.persister is not None:
            self.persister.put(self._entry(cmd))
        self._dirty.set()
        # Every transition is on the bus already; the log keeps failures at INFO (and the
        # rest at DEBUG, when that is on: asking structlog costs more than the check).
        if cmd.state in FAILURE_STATES or self._debug:
            emit = self._log.info if cmd.state in FAILURE_STATES else self._log.debug
            emit(
                "step_state_changed", step=cmd.step, state=cmd.state.value,
                attempt=cmd.attempt, job_id=cmd.job_id or None, exit_code=cmd.exit_code,
                reason=cmd.reason or None,
            )

    def _entry(self, cmd: PublishState) -> StepEntry:
        rec = self.records[cmd.step]
        # A WAITING step already names the attempt it will make: its intent is stored
        # while it waits for a slot, so the slot is not held up by that write later.
        intent = rec.attempt + 1 if rec.state == StepState.WAITING else rec.attempt
        return StepEntry(
            study_id=self.study_id, step=cmd.step, state=rec.state.value, attempt=rec.attempt,
            job_id=rec.job_id, exit_code=rec.exit_code, submit_time=rec.submit_time,
            start_time=rec.start_time, end_time=rec.end_time, restarts=rec.restarts,
            retries=rec.retries, merlin_retries=rec.merlin_retries, hw_failures=rec.hw_failures,
            use_restart=rec.use_restart, reason=rec.reason,
            final=cmd.final and rec.state in TERMINAL_STATES, soft=cmd.soft,
            intent_attempt=intent, intent_key=f"{self.study_id}/{cmd.step}/{intent}",
            worker=self.worker,
        )

    async def _resume(self, rec: Recovered) -> None:
        """Replay what the store knew: terminal facts, adopted jobs, lost attempts."""
        send = self._send.send_nowait
        now = self.clock()
        for name in rec.terminal:
            self._terminal_seen.add(name)
            state = self.records[name].state
            for child in self.graph.children[name]:
                if self.records[child].state == StepState.INITIALIZED:  # still waiting
                    send((child, DependencyEnded(event_id=new_event_id(), dependency=name,
                                                 state=state, soft=name in rec.soft)))
            send((_SUPERVISOR, StepEnded(event_id=new_event_id(), step=name, state=state,
                                         benign=_lost_race(state, self.records[name].reason))))
        for name in rec.cached:
            cached = StepStateChanged(
                event_id=new_event_id(), study_id=self.study_id, step=name, attempt=0,
                state=StepState.CACHED, previous=StepState.INITIALIZED, time=now, final=True,
                reason="reused from an earlier study with the same cache key",
            )
            await self.bus.publish_event(subjects.step_event(self.study_id, name, "cached"),
                                         cached)
            if self.persister is not None:  # final in the store: a restart keeps it
                self.persister.put(self._entry(PublishState(
                    step=name, state=StepState.CACHED, previous=StepState.INITIALIZED,
                    attempt=0, time=now, final=True)))
        for name, attempt in rec.lost.items():
            lost = StepStateChanged(
                event_id=new_event_id(), study_id=self.study_id, step=name, attempt=attempt,
                state=StepState.FAILED, previous=StepState.RUNNING, time=now, kind="lost",
                retryable=True, reason="the attempt was lost with the engine; running it again",
            )
            await self.bus.publish_event(subjects.step_event(self.study_id, name, "failed"), lost)
        # Decide the races again from what ended (the winner is not stored): the first
        # FINISHED member to pass the check, in order of end; losers already cancelled
        # stay so, one the old engine had not cancelled yet is cancelled now.
        finished = [n for n in rec.terminal if n in self.races.group
                    and self.records[n].state == StepState.FINISHED]
        for name in sorted(finished, key=lambda n: self.records[n].end_time or 0.0):
            await self.races.finished(name, self._cancel_exact)
        assert self._tg is not None
        for name, handle in rec.adopted.items():
            self._handles[(name, handle.attempt)] = handle
            self._tg.start_soon(self._wait_job, name, handle)
        for name, result in rec.ended.items():
            send((name, JobExited(event_id=new_event_id(), exit_code=result.exit_code,
                                  outcome=result.outcome.value, detail=result.detail, time=now)))
        self._log.info("study_resumed", terminal=len(rec.terminal), adopted=len(rec.adopted),
                       ended=len(rec.ended), lost=len(rec.lost))

    async def _wait_job(self, name: str, handle: JobHandle) -> None:
        key = (name, handle.attempt)
        try:
            result = await self.adapter.wait(handle)
        finally:
            self._handles.pop(key, None)
        self._send.send_nowait((name, JobExited(
            event_id=new_event_id(), exit_code=result.exit_code, outcome=result.outcome.value,
            detail=result.detail, time=self.clock())))

    async def _run_job(self, name: str, attempt: int, restart: bool) -> None:
        """One job's life: store the intent, submit, report the start, wait, report the exit."""
        inst = self.races.substitute(self.graph.by_name[name])
        send = self._send.send_nowait
        if self.persister is not None:
            await self.persister.wait_intent(name, attempt)
        request = JobRequest(step=inst, attempt=attempt, restart=restart,
                             key=f"{self.study_id}/{name}/{attempt}")
        try:
            handle = await self.adapter.submit(request)
        except SubmitError as exc:
            self._log.warning("submit_failed", step=name, attempt=attempt, error=str(exc))
            send((name, SubmitFailed(event_id=new_event_id(), detail=str(exc),
                                     retryable=exc.retryable)))
            return
        key = (name, attempt)
        self._handles[key] = handle
        send((name, JobStarted(event_id=new_event_id(), job_id=handle.job_id, time=self.clock())))
        self._prepare_next(name)
        if key in self._cancel_pending:
            self._cancel_pending.discard(key)
            assert self._tg is not None
            self._tg.start_soon(self.adapter.cancel, handle)
        await self._wait_job(name, handle)

    def _prepare_next(self, name: str) -> None:
        """While ``name`` runs, write the files of the few children it alone holds back
        (a chain's next step), so that their submission only starts a process."""
        prepare = getattr(self.adapter, "prepare", None)
        if prepare is None:
            return
        children = self.graph.children[name]
        if len(children) > _PREPARE_AHEAD:
            return  # a fan-out: preparing them all would hold up this step's own end
        for child in children:
            rec, inst = self.records[child], self.graph.by_name[child]
            if rec.state == StepState.INITIALIZED and rec.remaining == 1 and not inst.when:
                try:
                    prepare(self.races.substitute(inst))
                except OSError:
                    pass  # its submission writes them (and reports the error)

    async def _timer(self, name: str, timer: str, attempt: int, delay: float) -> None:
        await anyio.sleep(delay)
        self._send.send_nowait((name, TimerFired(event_id=new_event_id(), name=timer,
                                                 attempt=attempt)))

    def _stop(self, reason: str) -> None:
        """Stop the whole study (Merlin hard fail): cancel every step, once."""
        if self._cancel_count:
            return
        self._cancel_count = 1
        self._send.send_nowait((_SUPERVISOR, StudyCancelRequested(event_id=new_event_id())))
        for name in self._order:
            self._send.send_nowait((name, CancelRequested(event_id=new_event_id(), reason=reason)))

    async def _listen_reports(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hand the exit statuses that scheduler jobs push over NATS to the adapter."""
        async with self.bus.subscribe(subjects.job_reports(self.study_id)) as reports:
            task_status.started()
            async for msg in reports:
                if isinstance(msg, JobReported):
                    self.adapter.report(msg.exit_file, msg.exit_code)  # type: ignore[attr-defined]

    async def _serve_control(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer control requests (cancel steps, change a throttle) for this study."""
        async with self.bus.serve(subjects.control(self.study_id, "*")) as requests:
            task_status.started()
            async for request, reply in requests:
                await reply(answer_control(self, request))

    async def _cancel_job(self, name: str, attempt: int) -> None:
        handle = self._handles.get((name, attempt))
        if handle is None:
            self._cancel_pending.add((name, attempt))  # still being submitted
            return
        await self.adapter.cancel(handle)

    async def _status_writer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            started = time.perf_counter()
            self._write_status_now()
            spent = time.perf_counter() - started
            # Coalesce harder for big studies: writing never takes over 10% of the loop.
            await anyio.sleep(max(self.status_interval, 10 * spent))

    def _write_status_now(self) -> None:
        assert self.status_path is not None
        text = self._table.render(self.records, now=self.clock())
        write_status(self.status_path, text)

