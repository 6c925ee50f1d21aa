"""The long-running engine (``enginectl serve``): many studies, an API on NATS, durable
state, crash resume and graceful stop.

On start it opens the store, registers itself as a worker, and resumes every study the
store says is RUNNING (see ``engine.actors.recovery``). It answers the request/reply API
(``docs/api.md``) on ``troupe.v1.api.<verb>``. On SIGTERM it stops granting slots, lets
running local steps finish within the drain timeout, stops the rest and records them as
interrupted (they run again on the next start), stores everything, and returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import msgspec
import structlog

from adapters.base import AdapterError
from engine import store as stores
from engine import subjects
from engine.actors.control import answer_control, answer_not_hosted
from engine.actors.study import StudyRuntime
from engine.bus import Bus
from engine.dbapi import answer_db
from engine.errors import BusError, ConfigError, EngineError, StoreError
from engine.hosting import (
    HostedStudy,
    Start,
    StudyOptions,
    build_runtime,
    check_study,
    make_study_id,
)
from engine.layout import acquire_dependencies, prepare_study_dir
from engine.leases import HEARTBEAT, Lease, record_workers
from engine.messages import (
    AnyBusMessage,
    BusMessage,
    CancelSteps,
    ControlReply,
    DbRequest,
    EventsReply,
    EventsRequest,
    RestartRequest,
    SetThrottle,
    StatusReply,
    StatusRequest,
    StopWorkers,
    StudyEnded,
    StudyState,
    StudySummary,
    SubmitReply,
    SubmitRequest,
    new_event_id,
)
from engine.spec import load_study
from engine.spec.graph import StudyGraph
from engine.status import state_counts, status_page
from engine.store import RunEntry, StepEntry, Store, StudyEntry, WorkerEntry
from engine.studyref import resolve_study

__all__ = ["QUARANTINE_AFTER", "EngineService"]

QUARANTINE_AFTER = 2
API_GROUP = "troupe-engines"
"""The queue group of the API subjects: with several engines on one bus, each request
(a submit above all) is taken by exactly one of them."""
"""A study whose hosting failed this many times is not restarted again."""

_EXPAND_TIMEOUT = 600.0  # seconds a submitted spec may take to load and expand
_REMEMBERED_SUBMITS = 4096  # request ids whose answer is kept for a retried submit

_SUBMIT_KEYS = ("throttle", "rlimit", "attempts", "dry_run", "run_local", "pgen", "pargs",
                "out_dir", "reuse", "use_cache", "samples_file", "per_sample_status",
                "strict", "executor")  # fmt: skip


class _Submission:
    """One submit request's answer, shared with the retries of the same request id."""

    def __init__(self, reply: SubmitReply | None = None) -> None:
        self.done = anyio.Event()
        self.reply = reply
        if reply is not None:
            self.done.set()


@dataclass
class _Hosted:
    study: HostedStudy
    entry: StudyEntry  # as stored when it was launched (status reads it, not the store)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def runtime(self) -> StudyRuntime:
        return self.study.runtime


class EngineService:
    """Runs studies submitted over NATS until ``stop`` is called.

    Args:
        bus: A connected bus with JetStream.
        store: The durable state.
        drain_timeout: Seconds running steps get to finish on a graceful stop.
        job_credentials: Gives the user and password a study's scheduler jobs report their
            exit status with (``engine.notify``, ``engine.authz.job_user``); None: the
            jobs get no credentials.
    """

    def __init__(self, bus: Bus, store: Store, *, drain_timeout: float = 30.0,
                 job_credentials: Callable[[str], tuple[str, str]] | None = None,
                 max_running: int = 0, worker: str = "") -> None:
        self.bus = bus
        # Every study's jobs share it (``--max-running``; 0: no limit), changed live by a
        # throttle request with no study and the scope ``engine``.
        self.engine_slots = anyio.CapacityLimiter(max_running or math.inf)
        self._job_credentials = job_credentials
        self.store = store
        self.drain_timeout = drain_timeout
        # The engine's id: stable per state directory (``serve`` gives it), so that the
        # same engine restarted resumes its own studies at once (``engine.leases``).
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self._lease = Lease(store, self.worker)
        self.hosted: dict[str, _Hosted] = {}
        self._submissions: OrderedDict[str, _Submission] = OrderedDict()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopping = False
        self._stop = anyio.Event()
        self.stopped = anyio.Event()
        self._log = structlog.get_logger("troupe.service").bind(worker=self.worker)

    def stop(self) -> None:
        """Begin a graceful stop (``serve`` returns once it is done)."""
        self._stop.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resume stored studies, answer the API, and return after a graceful stop."""
        started = time.time()
        await self.store.put_worker(WorkerEntry(worker=self.worker, host=socket.gethostname(),
                                                pid=os.getpid(), started=started,
                                                heartbeat=started))
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.bus.redeliver)
            tg.start_soon(self._heartbeat, started)
            tg.start_soon(record_workers, self.bus, self.store, self._log)
            for verb in ("submit", "status", "cancel", "restart", "throttle", "events", "db", "stop_workers"):
                await tg.start(self._serve_verb, verb)
            for entry in await self.store.list_studies():
                if entry.request_id:
                    self._remember(entry.request_id, SubmitReply(
                        event_id="", ok=True, study_id=entry.study_id,
                        study_dir=entry.study_dir))
                if entry.state == "RUNNING" and await self._lease.may_host(entry, self.hosted):
                    await self._launch(entry, start=Start.RESUME)
            tg.start_soon(self._lease.take_over, self.hosted, self._take, lambda: self._stopping)
            self._log.info("engine_ready", studies=len(self.hosted))
            task_status.started()
            await self._stop.wait()
            await self._drain()
            tg.cancel_scope.cancel()
        self.stopped.set()

    # ------------------------------------------------------------------ API

    async def _serve_verb(self, verb: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # One queue group for every engine on the bus: a request is answered once.
        async with self.bus.serve(subjects.api(verb), queue=API_GROUP) as requests:
            task_status.started()
            async for request, reply in requests:
                try:
                    answer = await self._answer(request)
                except (StoreError, BusError) as exc:
                    # The store is busy (a cluster electing a leader): no answer, so that
                    # the client asks again (status and events do) or says so.
                    self._log.warning("request_not_answered", verb=verb, error=str(exc))
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad request must not stop the engine
                    self._log.exception("request_failed", verb=verb)
                    answer = ControlReply(event_id=new_event_id(), ok=False,
                                          detail=f"internal error: {type(exc).__name__}: {exc}")
                await self._reply(verb, reply, answer)

    async def _reply(self, verb: str, reply: Callable[[BusMessage], Awaitable[None]],
                     answer: BusMessage) -> None:
        """Send ``answer``; one that cannot be sent (larger than the server's payload
        limit, the connection gone) is logged, and replaced by a short error if it can
        be: no reply ever stops the engine."""
        try:
            await reply(answer)
        except Exception as exc:  # noqa: BLE001 - nats-py raises its own errors here
            self._log.error("reply_failed", verb=verb, error=f"{type(exc).__name__}: {exc}")
            why = f"the engine could not send its reply: {type(exc).__name__}: {exc}"
            rid = new_event_id()
            short: BusMessage = (StatusReply(event_id=rid, ok=False, error=why)
                                 if isinstance(answer, StatusReply) else
                                 EventsReply(event_id=rid, ok=False, error=why)
                                 if isinstance(answer, EventsReply) else
                                 ControlReply(event_id=rid, ok=False, detail=why))
            with contextlib.suppress(Exception):
                await reply(short)

    async def _answer(self, request: AnyBusMessage) -> BusMessage:
        rid = new_event_id()
        if isinstance(request, SetThrottle) and not request.study_id:
            if request.scope != "engine" or request.limit < 0:
                return ControlReply(event_id=rid, ok=False, detail=(
                    "without a study, throttle sets the engine-wide limit: scope 'engine', "
                    "0 or more"))
            self.engine_slots.total_tokens = request.limit or math.inf
            return ControlReply(event_id=rid, ok=True, detail=f"throttle engine = {request.limit}")
        if isinstance(request, (StatusRequest, CancelSteps, SetThrottle, RestartRequest,
                                EventsRequest)) and request.study_id:
            try:  # a prefix, a name or a directory: the study's id
                request = msgspec.structs.replace(request, study_id=await self._study_id(
                    request.study_id))
            except ConfigError as exc:
                if isinstance(request, StatusRequest):
                    return StatusReply(event_id=rid, ok=False, error=str(exc))
                if isinstance(request, EventsRequest):
                    return EventsReply(event_id=rid, ok=False, error=str(exc))
                return ControlReply(event_id=rid, ok=False, detail=str(exc))
        match request:
            case SubmitRequest():
                return await self._submit(request)
            case StatusRequest():
                return await self._status(request)
            case CancelSteps(study_id=sid) | SetThrottle(study_id=sid):
                hosted = self.hosted.get(sid)
                if hosted is not None:
                    return answer_control(hosted.runtime, request)
                entry = await self.store.get_study(sid)
                if entry is not None and entry.state == "RUNNING":
                    # Hosted by another engine on this bus: its runtime answers its
                    # study's control subject.
                    verb = "cancel" if isinstance(request, CancelSteps) else "throttle"
                    try:
                        return await self.bus.request(subjects.control(sid, verb), request,
                                                      timeout=5.0)
                    except BusError:
                        pass  # nobody hosts it right now (an engine restarting)
                return answer_not_hosted(request, known=entry is not None)
            case RestartRequest(study_id=sid):
                return await self._restart(sid)
            case DbRequest():
                return await answer_db(self.store, request, stop_study=self._stop_study)
            case StopWorkers():
                await self.bus.publish(subjects.WORKERS_STOP, request)
                return ControlReply(event_id=rid, ok=True, detail="the workers were asked to stop")
            case EventsRequest(study_id=sid):
                if await self.store.get_study(sid) is None:
                    return EventsReply(event_id=rid, ok=False, error=f"unknown study {sid}")
                raw = await self.bus.replay_raw(subjects.study_events(sid), timeout=1.0)
                return EventsReply(event_id=rid, ok=True,
                                   events=tuple(msgspec.Raw(r) for r in raw))
            case _:
                return ControlReply(event_id=rid, ok=False,
                                    detail=f"unsupported request {type(request).__name__}")

    async def _stop_study(self, study_id: str, timeout: float = 60.0) -> bool:
        """Cancel a hosted study and wait until it ended and was stored (``db delete
        --force``); False if it is still hosted after ``timeout`` seconds."""
        hosted = self.hosted.get(study_id)
        if hosted is None:
            return True
        hosted.runtime.cancel(reason="deleted with enginectl db delete --force")
        with anyio.move_on_after(timeout):
            while study_id in self.hosted:
                await anyio.sleep(0.05)
        return study_id not in self.hosted

    async def _study_id(self, ref: str) -> str:
        """The id of the study ``ref`` names (``engine.studyref``)."""
        if ref in self.hosted or await self.store.get_study(ref) is not None:
            return ref
        return resolve_study(ref, await self.store.list_studies()).study_id

    def _remember(self, request_id: str, reply: SubmitReply) -> _Submission:
        sub = self._submissions[request_id] = _Submission(reply)
        while len(self._submissions) > _REMEMBERED_SUBMITS:
            self._submissions.popitem(last=False)
        return sub

    async def _submit(self, req: SubmitRequest) -> SubmitReply:
        """Answer a submit; a retry of one already seen (same ``request_id``) gets the
        first one's answer, waiting for it if it is still being prepared."""
        if not req.request_id:
            return await self._submit_once(req)
        sub = self._submissions.get(req.request_id)
        if sub is None:
            sub = self._submissions[req.request_id] = _Submission()
            try:
                sub.reply = await self._submit_once(req)
            finally:
                sub.done.set()
        await sub.done.wait()
        if sub.reply is None:  # the first copy failed unexpectedly: try again
            self._submissions.pop(req.request_id, None)
            return await self._submit(req)
        return msgspec.structs.replace(sub.reply, event_id=new_event_id())

    async def _submit_once(self, req: SubmitRequest) -> SubmitReply:
        rid = new_event_id()
        if self._stopping:
            return SubmitReply(event_id=rid, ok=False, error="the engine is stopping")
        opts = {k: getattr(req, k) for k in _SUBMIT_KEYS}

        def prepare() -> StudyGraph:
            # In a worker thread: a big spec takes seconds to expand, and the engine
            # answers everyone else meanwhile.
            graph = self._load(req.spec_path, req.spec_text, req.out_dir or None, req.cwd,
                               req.pgen or None, req.pargs, dt.datetime.now(), req.executor)
            check_study(graph, StudyOptions.from_stored(opts))
            for warning in graph.warnings if req.strict else ():
                if "unresolved token" in warning:
                    raise ConfigError(f"{req.spec_path}: {warning} (--strict)")
            prepare_study_dir(graph, pgen=req.pgen or None, spec_text=req.spec_text)
            return graph

        try:
            with anyio.fail_after(_EXPAND_TIMEOUT):
                graph = await anyio.to_thread.run_sync(prepare, abandon_on_cancel=True)
        except EngineError as exc:
            return SubmitReply(event_id=rid, ok=False, error=str(exc))
        except TimeoutError:
            return SubmitReply(event_id=rid, ok=False, error=(
                f"{req.spec_path}: the spec took over {_EXPAND_TIMEOUT:g} s to expand"))
        study_id = make_study_id(graph.name)
        entry = StudyEntry(
            study_id=study_id, name=graph.name, spec_path=req.spec_path, spec_text=req.spec_text,
            study_dir=graph.study_dir, cwd=req.cwd, state="RUNNING", created=time.time(),
            options=opts, request_id=req.request_id, host=self.worker,
        )
        try:
            await stores.retry_store(self.store.put_study, entry)
        except StoreError as exc:  # the directory is prepared: a retry would find it taken
            return SubmitReply(event_id=rid, ok=False, error=(
                f"the study could not be stored ({exc}); its directory {graph.study_dir} "
                "was prepared: submit again with another -o"))
        await self._launch(entry, graph=graph, start=Start.FRESH)
        return SubmitReply(event_id=rid, ok=True, study_id=study_id, study_dir=graph.study_dir,
                           warnings=graph.warnings)

    async def _restart(self, study_id: str) -> ControlReply:
        rid = new_event_id()
        entry = await self.store.get_study(study_id)
        if entry is None:
            return ControlReply(event_id=rid, ok=False, detail=f"unknown study {study_id}")
        if study_id in self.hosted:
            return ControlReply(event_id=rid, ok=False, detail=f"study {study_id} is running")
        if entry.hosting_failures >= QUARANTINE_AFTER:
            return ControlReply(event_id=rid, ok=False, detail=(
                f"study {study_id} is quarantined: the engine failed to host it "
                f"{entry.hosting_failures} times (last: {entry.error})"))
        if entry.state == "RUNNING" and entry.host != self.worker and \
                entry.host in await self._lease.live_engines():
            return ControlReply(event_id=rid, ok=False,
                                detail=f"study {study_id} is running on engine {entry.host}")
        entry = StudyEntry(**{**_fields(entry), "state": "RUNNING", "ended": None, "error": "",
                              "host": self.worker})
        await self.store.put_study(entry)
        if not await self._launch(entry, start=Start.RESTART):
            return ControlReply(event_id=rid, ok=False,
                                detail=f"study {study_id} could not be restarted: see its error")
        return ControlReply(event_id=rid, ok=True, detail=f"study {study_id} restarted")

    async def _status(self, req: StatusRequest) -> StatusReply:
        rid = new_event_id()
        if req.study_id:
            hosted = self.hosted.get(req.study_id)
            entry = hosted.entry if hosted else await self.store.get_study(req.study_id)
            if entry is None:
                return StatusReply(event_id=rid, ok=False, error=f"unknown study {req.study_id}")
            if hosted is not None:
                rt = hosted.runtime
                total, records = len(rt.order), rt.records
                steps = tuple(StepEntry.from_record(records[rt.order[i]], study_id=rt.study_id)
                              .summary() for i in status_page(total, req.offset, req.limit))
                counts = rt.state_counts()
            else:
                stored = {e.step: e for e in await self.store.list_steps(req.study_id)}
                order, total = _order(stored), len(stored)
                steps = tuple(stored[order[i]].summary()
                              for i in status_page(total, req.offset, req.limit))
                counts = state_counts(e.state for e in stored.values())
            if hosted is not None and hosted.runtime.outcome is not None:
                # Ended a moment ago (its StudyEnded is out) but not yet stored as such.
                entry = StudyEntry(**{**_fields(entry), "state": hosted.runtime.outcome.value})
            return StatusReply(event_id=rid, ok=True, studies=(_study(entry, counts),), steps=steps,
                               total_steps=total)
        out = []
        for entry in await self.store.list_studies(state=req.state, name=req.name):
            hosted = self.hosted.get(entry.study_id)
            counts = hosted.runtime.state_counts() if hosted else entry.counts
            out.append(_study(entry, counts))
        return StatusReply(event_id=rid, ok=True, studies=tuple(out))

    # ------------------------------------------------------------------ hosting

    def _load(self, spec_path: str, text: str, out_dir: str | None, cwd: str,
              pgen: str | None, pargs: tuple[str, ...], now: dt.datetime,
              executor: str = "") -> StudyGraph:
        return load_study(spec_path, text=text, out_dir=out_dir, now=now, cwd=cwd, pgen=pgen,
                          pargs=pargs, executor=executor or None)

    async def _launch(self, entry: StudyEntry, *, graph: StudyGraph | None = None,
                      start: Start) -> bool:
        """Build the study's runtime and host it; False (the study recorded FAILURE with
        the error) if it cannot be built."""
        try:
            opts = StudyOptions.from_stored(entry.options)
            if graph is None:  # (expanded in a worker thread, as a submit is)
                graph = await anyio.to_thread.run_sync(
                    self._load, entry.spec_path, entry.spec_text, entry.study_dir, entry.cwd,
                    str(entry.options.get("pgen") or "") or None,
                    tuple(entry.options.get("pargs") or ()), dt.datetime.now(),
                    str(entry.options.get("executor") or ""))
            job_user = job_password = None
            if self._job_credentials is not None:
                job_user, job_password = self._job_credentials(entry.study_id)
            study = await build_runtime(
                graph, opts, study_id=entry.study_id, bus=self.bus, start=start,
                store=self.store, worker=self.worker,
                notify_user=job_user, notify_password=job_password,
                engine_slots=self.engine_slots)
        except Exception as exc:  # noqa: BLE001 - one study must not stop the engine
            await self._hosting_failed(entry, exc, counts={})
            return False
        hosted = _Hosted(study=study, entry=entry)
        self.hosted[entry.study_id] = hosted
        run_id = f"{entry.study_id}.{new_event_id()}"
        await self.store.put_run(RunEntry(run_id=run_id, study_id=entry.study_id,
                                          workspace=graph.study_dir, worker=self.worker,
                                          started=time.time()))
        assert self._tg is not None
        self._tg.start_soon(self._host, entry, hosted, run_id, start is Start.FRESH)
        return True

    async def _host(self, entry: StudyEntry, hosted: _Hosted, run_id: str, fresh: bool) -> None:
        rt = hosted.runtime
        state = None
        started = time.time()
        try:
            with hosted.scope:
                if fresh:
                    await acquire_dependencies(rt.graph)
                state = await rt.run()
        except EngineError as exc:
            self._log.warning("study_failed_to_start", study_id=entry.study_id, error=str(exc))
            state_name = "FAILURE"
        except Exception as exc:  # noqa: BLE001 - one study must not stop the engine
            # Its runtime broke: stop what it started, record why, and keep serving.
            await self._stop_jobs(hosted)
            hosted.done.set()
            self.hosted.pop(entry.study_id, None)
            await self._hosting_failed(entry, exc, counts=rt.state_counts(), run_id=run_id)
            return
        else:
            state_name = state.value if state is not None else ""
        finally:
            hosted.done.set()
        if not state_name:
            return  # interrupted by a graceful stop: the study stays RUNNING in the store
        try:
            hosted.study.record_cache()  # for a later --reuse
        except OSError as exc:
            self._log.warning("cache_not_written", study_id=entry.study_id, error=str(exc))
        ended = time.time()
        await self._retrying(lambda: self.store.put_study(StudyEntry(
            **{**_fields(entry), "state": state_name, "ended": ended, "counts": rt.counts})))
        await self._retrying(lambda: self.store.put_run(RunEntry(
            run_id=run_id, study_id=entry.study_id, workspace=rt.graph.study_dir,
            worker=self.worker, started=started, state=state_name, ended=ended)))
        self.hosted.pop(entry.study_id, None)

    async def _hosting_failed(self, entry: StudyEntry, exc: Exception, *,
                              counts: dict[str, int], run_id: str = "") -> None:
        """Record that the engine could not host ``entry`` (FAILURE, with the error), and
        tell its watchers it ended."""
        error = _describe(exc)
        failures = entry.hosting_failures + 1
        self._log.error("study_hosting_failed", study_id=entry.study_id, error=error,
                        failures=failures, exc_info=exc)
        ended = time.time()
        await self._retrying(lambda: self.store.put_study(StudyEntry(**{
            **_fields(entry), "state": "FAILURE", "ended": ended, "counts": counts,
            "error": error, "hosting_failures": failures})))
        if run_id:
            await self._retrying(lambda: self.store.put_run(RunEntry(
                run_id=run_id, study_id=entry.study_id, workspace=entry.study_dir,
                worker=self.worker, started=ended, state="FAILURE", ended=ended)))
        with anyio.move_on_after(30):
            await self.bus.publish_event(
                subjects.study_event(entry.study_id, "ended"),
                StudyEnded(event_id=new_event_id(), study_id=entry.study_id,
                           state=StudyState.FAILURE, time=ended, counts=counts), fence=True)

    async def _stop_jobs(self, hosted: _Hosted) -> None:
        """Stop every job a broken runtime left (shielded, bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            for handle in hosted.runtime.active_jobs().values():
                try:
                    await hosted.study.adapter.cancel(handle)
                except AdapterError as exc:
                    self._log.warning("job_not_cancelled", step=handle.step, error=str(exc))
            hosted.study.adapter.kill_all_now()

    async def _take(self, entry: StudyEntry) -> None:
        """Host a study taken over from an engine that died (``engine.leases``)."""
        await self._launch(msgspec.structs.replace(entry, host=self.worker), start=Start.RESUME)

    async def _heartbeat(self, started: float) -> None:
        while True:
            await anyio.sleep(HEARTBEAT)
            await self._retrying(lambda: self.store.put_worker(WorkerEntry(
                worker=self.worker, host=socket.gethostname(), pid=os.getpid(), started=started,
                heartbeat=time.time(), studies=tuple(self.hosted))))

    async def _retrying(self, op: Callable[[], Awaitable[object]], *, limit: float = 120.0) -> None:
        """Run a store operation, retrying while the bus reconnects (up to ``limit`` s)."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                await op()
                return
            except (StoreError, BusError) as exc:  # a NATS outage: retried, then re-raised
                if waited >= limit:
                    raise
                self._log.warning("store_write_retried", error=str(exc) or type(exc).__name__)
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def _drain(self) -> None:
        """Stop granting, let running steps finish, then stop and record the rest."""
        self._stopping = True
        self._log.info("engine_draining", studies=len(self.hosted), timeout=self.drain_timeout)
        for hosted in self.hosted.values():
            hosted.runtime.pause_submissions()
        with anyio.move_on_after(self.drain_timeout):
            while any(h.runtime.active_steps() for h in self.hosted.values()):
                await anyio.sleep(0.05)
        for study_id, hosted in list(self.hosted.items()):
            rt = hosted.runtime
            with anyio.move_on_after(10):
                await rt.wait_stored()
            # Take what is still running before the runtime's tasks (which own the
            # handles) are cancelled.
            active = rt.active_steps()
            handles = rt.active_jobs()
            hosted.scope.cancel()
            await hosted.done.wait()
            for name, rec in active.items():
                # Recorded first: should this engine die while stopping the job, the next
                # one still runs the step again rather than trusting what the job wrote.
                entry = StepEntry.from_record(rec, study_id=study_id, worker=self.worker,
                                              interrupted=True,
                                              reason="interrupted by the engine's shutdown")
                await self._retrying(lambda entry=entry: self.store.put_step(entry), limit=30)
                handle = handles.get((name, rec.attempt))
                if handle is not None:
                    await hosted.study.adapter.cancel(handle)
        self._log.info("engine_stopped")


def _describe(exc: BaseException) -> str:
    """One line for an error (the first one inside task groups' exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fields(entry: StudyEntry) -> dict[str, object]:
    return {f: getattr(entry, f) for f in entry.__struct_fields__}


def _study(entry: StudyEntry, counts: dict[str, int]) -> StudySummary:
    return StudySummary(study_id=entry.study_id, name=entry.name, state=entry.state,
                        study_dir=entry.study_dir, created=entry.created, ended=entry.ended,
                        counts=counts, error=entry.error)


def _order(stored: dict[str, StepEntry]) -> list[str]:
    return sorted(stored, key=lambda n: (stored[n].submit_time or float("inf"), n))

