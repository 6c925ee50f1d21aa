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
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio
import msgspec
import structlog

from adapters.watchdog import open_study_watchdog
from engine import subjects
from engine.actors.study import StudyRuntime
from engine.authz import NatsUser, job_user, new_secrets, role_users
from engine.bus import Credentials, open_bus
from engine.errors import printable
from engine.hosting import StudyOptions, build_runtime, check_study, make_study_id
from engine.layout import acquire_dependencies, prepare_study_dir
from engine.log import study_log_file
from engine.messages import StudyState
from engine.merlin import SamplesError
from engine.natsserver import open_embedded_server
from engine.spec.graph import StudyGraph
from engine.spec.naming import contained_path

__all__ = ["RunOptions", "default_progress_stream", "run_study"]


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


async def run_study(graph: StudyGraph, opts: RunOptions) -> StudyState:
    """Run ``graph`` to completion in this process and return its final state.

    Raises:
        ConfigError: the study directory exists, a dependency cannot be acquired, or a
            step needs a backend this version lacks.
        BusError: the NATS server cannot be started or reached.
    """
    check_study(graph, opts.study)
    root = prepare_study_dir(graph, pgen=opts.pgen)
    study_id = make_study_id(graph.name)
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
                engine_user = role_users(secrets_)[0]
                server = await stack.enter_async_context(open_embedded_server(
                    root / "meta" / "nats", users=[engine_user, job], sync_always=False))
                url = server.url
                creds = Credentials(user=engine_user.name, password=engine_user.password)
            bus = await stack.enter_async_context(open_bus(url, creds))
            if not await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()]):
                log.warning("jetstream_unavailable", url=url, detail="events are not durable")
            try:
                hosted = await build_runtime(graph, opts.study, study_id=study_id, bus=bus,
                                             notify_user=job.name if job else None,
                                             notify_password=job.password if job else None)
            except SamplesError as exc:  # the study fails before any step runs
                log.error("samples_failed", error=str(exc))
                print(f"error: {printable(str(exc))}", file=sys.stderr)
                return StudyState.FAILURE
            runtime = hosted.runtime
            if runtime.cached:
                log.info("steps_reused", cached=len(runtime.cached), total=len(graph.steps))
            # One-shot process: what exists now (the graph, the records, the modules) lives
            # to the end, so the cyclic collector need not walk it again and again.
            gc.freeze()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_signals, runtime)
                if bus.durable:
                    tg.start_soon(bus.redeliver)
                if opts.progress is not None:
                    tg.start_soon(_show_progress, runtime, opts.progress)
                state = await runtime.run()
                tg.cancel_scope.cancel()
            if opts.progress is not None:
                _draw(runtime, opts.progress, final=True)
            if not opts.study.dry_run:
                hosted.record_cache()
        log.info("study_completed", state=state.value)
    return state


async def _cancel_on_signals(runtime: StudyRuntime) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            structlog.get_logger("troupe.run").warning(
                "study_cancel_requested", signal=signal.Signals(signum).name
            )
            runtime.cancel(reason=f"cancelled by {signal.Signals(signum).name}")


async def _show_progress(runtime: StudyRuntime, out: TextIO) -> None:
    while True:
        _draw(runtime, out)
        await anyio.sleep(0.25)


def _draw(runtime: StudyRuntime, out: TextIO, *, final: bool = False) -> None:
    counts = runtime.state_counts()
    total = len(runtime.records)
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    out.write(f"\r\x1b[K{runtime.graph.name}: {total} steps: {text}")
    if final:
        out.write("\n")
    out.flush()


def default_progress_stream() -> TextIO | None:
    """stderr if it is a terminal, else None (``run`` stays quiet when piped)."""
    return sys.stderr if sys.stderr.isatty() else None

