"""One-shot mode (``enginectl run``): bus, adapter and study actors in this process.

``run_study`` prepares the study directory, acquires the spec's dependencies, starts an
embedded nats-server (or connects to ``nats_url``), makes sure the event stream exists,
runs the study, and turns SIGINT/SIGTERM into a clean cancel: every running step's
process group is stopped, the steps become CANCELLED, and the study ends CANCELLED. A
second signal SIGKILLs whatever is still running. If the process is killed outright
(SIGKILL), its embedded server dies with it (``PR_SET_PDEATHSIG``) and a watchdog
process kills whatever the study's steps still run (``adapters.watchdog``).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sys
import time
from functools import partial
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio
import msgspec
import structlog

from adapters.descendants import STUDY_VAR, kill_marked
from adapters.watchdog import open_study_watchdog
from engine import subjects
from engine.actors.study import StudyRuntime
from engine.authz import NatsUser, job_user, new_secrets, role_users
from engine.bus import Bus, Credentials, open_bus
from engine.errors import BusError, ConfigError, printable
from engine.hosting import Start, StudyOptions, build_runtime, check_study, make_study_id
from engine.layout import acquire_dependencies, prepare_study_dir, read_study_graph
from engine.log import study_log_file
from engine.diagnose import FailedStep
from engine.messages import (
    BUS_DECODER,
    FAILURE_STATES,
    StepState,
    StepStateChanged,
    StopWorkers,
    StudyState,
    new_event_id,
)
from engine.merlin import SamplesError
from engine.natsserver import open_embedded_server
from engine.progress import StudyProgress
from engine.runapi import CLIENT_FILE, serve_run_api, write_client_file
from engine.statedir import engine_alive, write_private
from engine.status import read_status
from engine.store import StepEntry
from engine.spec.graph import StudyGraph
from engine.spec.naming import contained_path

__all__ = ["RunOptions", "RunResult", "default_progress_stream", "load_run", "run_study"]


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How ``enginectl run`` runs one study.

    Attributes:
        study: How the study runs (throttles, restarts, dry run, reuse, ...).
        nats_url: Use this NATS server instead of an embedded one.
        credentials: Credentials for ``nats_url``.
        progress: Where to draw live progress (a TTY), or None for none.
        pgen: The custom parameter generator file, copied into the study directory.
    """

    study: StudyOptions = StudyOptions()
    nats_url: str | None = None
    credentials: Credentials | None = None
    progress: TextIO | None = None
    pgen: str | None = None


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a study run by ``run_study`` ended: its state and its failed steps."""

    state: StudyState
    failed: tuple[FailedStep, ...] = ()


RUN_FILE = ("meta", "run.json")
"""How a study of ``run`` was run (its id and options), for ``enginectl restart DIR``."""


class _RunFile(msgspec.Struct, frozen=True, kw_only=True):
    study_id: str
    study: StudyOptions


async def run_study(graph: StudyGraph, opts: RunOptions, *,
                    ended: Mapping[str, StepEntry] | None = None,
                    study_id: str = "") -> RunResult:
    """Run ``graph`` to completion in this process; say how it ended. With ``ended``
    (``restart_study``), the study runs again in its own directory, keeping those steps.

    Raises:
        ConfigError: the study directory exists, a dependency cannot be acquired, or a
            step needs a backend this version lacks.
        BusError: the NATS server cannot be started or reached.
    """
    check_study(graph, opts.study)
    if ended is None:
        root = prepare_study_dir(graph, pgen=opts.pgen)
        study_id = make_study_id(graph.name)
        write_private(root.joinpath(*RUN_FILE), msgspec.to_builtins(
            _RunFile(study_id=study_id, study=opts.study)))
    else:
        root = Path(graph.study_dir)
        # What the killed run left running (its watchdog kills it; this makes sure).
        await anyio.to_thread.run_sync(kill_marked, STUDY_VAR, study_id)
    began = False
    try:
        # Maestro's logs/<raw name>.log, sanitised: a name like '../../x' must stay in logs/.
        log_path = Path(contained_path(root / "logs", f"{graph.name}.log", keep_spaces=True))
        with study_log_file(log_path):
            log = structlog.get_logger("troupe.run").bind(study_id=study_id)
            log.info("study_prepared", study_dir=str(root), steps=len(graph.steps))
            await acquire_dependencies(graph)
            async with AsyncExitStack() as stack:
                # Entered first, so left last: after the runtime has stopped its steps.
                if not opts.study.dry_run:
                    stack.enter_context(open_study_watchdog(study_id))
                job: NatsUser | None = None
                client_user: NatsUser | None = None
                if opts.nats_url:
                    # The operator's server and credentials: the jobs get none (their exit
                    # files are read instead), never the engine's own.
                    url, creds = opts.nats_url, opts.credentials
                else:
                    # Nothing resumes a `run`: its events survive a crash of any process (the
                    # page cache), but are not fsynced one by one as under `serve`. Only this
                    # engine and its study's jobs can connect, each with what it needs.
                    secrets_ = new_secrets()
                    job = job_user(study_id, secrets_["jobs"])
                    engine_user, client_user, _, worker_user = role_users(secrets_)
                    server = await stack.enter_async_context(open_embedded_server(
                        root / "meta" / "nats", users=[engine_user, client_user, worker_user, job],
                        sync_always=False))
                    if graph.troupe.get("executor") == "workers":  # worker --study DIR
                        write_private(root / "meta" / "worker.json", {
                            "url": server.url, "user": worker_user.name,
                            "password": worker_user.password, "pid": os.getpid()})
                    url = server.url
                    creds = Credentials(user=engine_user.name, password=engine_user.password)
                bus = await stack.enter_async_context(open_bus(url, creds))
                if not await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()]):
                    log.warning("jetstream_unavailable", url=url, detail="events are not durable")
                if ended is not None:  # what the stored events say ended, too (status.csv lags)
                    ended = {**ended, **await _ended_by_events(bus, graph, study_id)}
                try:
                    hosted = await build_runtime(
                        graph, opts.study, study_id=study_id, bus=bus,
                        notify_user=job.name if job else None,
                        notify_password=job.password if job else None,
                        start=Start.FRESH if ended is None else Start.RESTART, stored=ended)
                except SamplesError as exc:  # the study fails before any step runs
                    log.error("samples_failed", error=str(exc))
                    print(f"error: {printable(str(exc))}", file=sys.stderr)
                    return RunResult(state=StudyState.FAILURE)
                runtime = hosted.runtime
                if runtime.cached:
                    log.info("steps_reused", cached=len(runtime.cached), total=len(graph.steps))
                # One-shot process: what exists now (the graph, the records, the modules) lives
                # to the end, so the cyclic collector need not walk it again and again.
                gc.freeze()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signals, runtime)
                    tg.start_soon(_cancel_on_lock_file, runtime, root / CANCEL_LOCK)
                    if client_user is not None:  # enginectl status|watch|events|cancel DIR
                        await tg.start(partial(serve_run_api, bus, runtime, created=time.time()))
                        write_client_file(str(root), url, client_user.name, client_user.password)
                    if bus.durable:
                        tg.start_soon(bus.redeliver)
                    view = None
                    if opts.progress is not None:
                        view = stack.enter_context(StudyProgress(
                            graph.name, len(graph.steps), opts.progress))
                        tg.start_soon(_show_progress, runtime, view)
                    began = True  # from here on the study ran: its directory stays
                    state = await runtime.run()
                    tg.cancel_scope.cancel()
                if client_user is not None and graph.troupe.get("executor") == "workers":
                    await _stop_own_workers(bus)
                if view is not None:
                    _draw(runtime, view)  # the last counts (the bar stops with the stack)
                if not opts.study.dry_run:
                    hosted.record_cache()
            log.info("study_completed", state=state.value)
        failed = tuple(FailedStep(step=r.name, state=r.state.value, exit_code=r.exit_code,
                                  reason=r.reason, attempts=r.attempt, job_id=r.job_id)
                       for r in runtime.records.values() if r.state in FAILURE_STATES)
        return RunResult(state=state, failed=failed)
    except BaseException:
        # An error before the first step (the NATS server unreachable, a backend that
        # cannot start) leaves no half-made study directory behind.
        if ended is None and not began:
            shutil.rmtree(root, ignore_errors=True)
        raise


def load_run(study_dir: str) -> tuple[StudyGraph, StudyOptions, str, dict[str, StepEntry]]:
    """What ``enginectl restart DIR`` needs of a study of ``run``: its graph (as it was
    expanded), its options, its id, and the steps that ended FINISHED or CACHED (from
    its ``status.csv``; a sampled step only if all its samples did).

    Raises:
        ConfigError: DIR is not a study of ``enginectl run``, or its run is still alive.
    """
    root = Path(study_dir)
    try:
        graph = read_study_graph(root)
        how = msgspec.json.decode(root.joinpath(*RUN_FILE).read_bytes(), type=_RunFile)
    except (ConfigError, OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{study_dir}: not a study of 'enginectl run' that can be "
                          f"restarted ({exc})") from exc
    client = root.joinpath(*CLIENT_FILE)
    try:
        pid = json.loads(client.read_text()).get("pid")
    except (OSError, ValueError):
        pid = None
    if isinstance(pid, int) and engine_alive(pid, ("run",)):
        raise ConfigError(f"{study_dir}: its 'enginectl run' is still running (pid {pid})")
    states: dict[str, set[str]] = {}
    try:
        for row in read_status(root / "status.csv"):
            states.setdefault(row["Step Name"], set()).add(row["State"])
    except (OSError, UnicodeDecodeError):
        pass
    kept = {name for name, seen in states.items() if seen <= {"FINISHED", "CACHED"}}
    ended = {s.name: StepEntry(study_id=how.study_id, step=s.name, state=next(iter(states[s.name])),
                               final=True) for s in graph.steps if s.name in kept}
    return graph, how.study, how.study_id, ended


async def _ended_by_events(bus: Bus, graph: StudyGraph, study_id: str) -> dict[str, StepEntry]:
    """The steps whose last stored event says they ended FINISHED or CACHED (the events
    of the killed run are in the study's own JetStream store, which ``run`` reopens)."""
    last: dict[str, StepState] = {}
    for raw in await bus.replay_raw(subjects.study_events(study_id), timeout=2.0):
        try:
            msg = BUS_DECODER.decode(raw)
        except msgspec.DecodeError:
            continue
        if isinstance(msg, StepStateChanged):
            last[msg.step] = msg.state if msg.final else StepState.RUNNING
    names = {s.name for s in graph.steps}
    return {n: StepEntry(study_id=study_id, step=n, state=st.value, final=True)
            for n, st in last.items() if n in names and st in (StepState.FINISHED,
                                                              StepState.CACHED)}


async def _stop_own_workers(bus: Bus) -> None:
    """The workers on this run's own server serve this study alone: it ended, so they
    stop (their server goes away with the run)."""
    try:
        await bus.publish(subjects.WORKERS_STOP, StopWorkers(event_id=new_event_id()))
        await bus.flush()
    except BusError:
        pass


async def _cancel_on_signals(runtime: StudyRuntime) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            structlog.get_logger("troupe.run").warning(
                "study_cancel_requested", signal=signal.Signals(signum).name
            )
            runtime.cancel(reason=f"cancelled by {signal.Signals(signum).name}")


CANCEL_LOCK = ".cancel.lock"
"""Maestro's cancel request: ``maestro cancel DIR`` creates it in the study directory."""


async def _cancel_on_lock_file(runtime: StudyRuntime, lock: Path, interval: float = 0.5) -> None:
    """Cancel the study once ``maestro cancel`` has created its lock file (Maestro's
    conductor polls for it too); the file is removed, as Maestro does."""
    while not lock.exists():
        await anyio.sleep(interval)
    structlog.get_logger("troupe.run").warning("study_cancel_requested", by=str(lock))
    runtime.cancel(reason="cancelled by maestro cancel")
    lock.unlink(missing_ok=True)


async def _show_progress(runtime: StudyRuntime, view: StudyProgress) -> None:
    while True:
        _draw(runtime, view)
        await anyio.sleep(0.25)


def _draw(runtime: StudyRuntime, view: StudyProgress) -> None:
    retries = restarts = 0
    for rec in runtime.records.values():
        retries += rec.retries + rec.merlin_retries + rec.hw_failures
        restarts += rec.restarts
    view.update(runtime.state_counts(), retries=retries, restarts=restarts)


def default_progress_stream() -> TextIO | None:
    """stderr if it is a terminal, else None (``run`` stays quiet when piped)."""
    return sys.stderr if sys.stderr.isatty() else None

