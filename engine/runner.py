"""One-shot mode (``enginectl run``): bus, adapter and study actors in this process.

``run_study`` prepares the study directory, acquires the spec's dependencies, starts an
embedded nats-server (or connects to ``nats_url``), makes sure the event stream exists,
runs the study, and turns SIGINT/SIGTERM into a clean cancel: every running step's
process group is stopped, the steps become CANCELLED, and the study ends CANCELLED. A
second signal SIGKILLs whatever is still running.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import signal
import sys
from contextlib import AsyncExitStack
from typing import TextIO

import anyio
import msgspec
import structlog

from engine import subjects
from engine.actors.study import StudyRuntime
from engine.backends import make_backends, notify_env
from engine.cache import cache_keys, record_cache, reuse_records
from engine.bus import Credentials, open_bus
from engine.errors import ConfigError
from engine.layout import acquire_dependencies, prepare_study_dir
from engine.log import study_log_file
from engine.messages import StudyState
from engine.natsserver import open_embedded_server
from engine.settings import CliOverrides, step_policies, throttle_limits, troupe_settings
from engine.spec.graph import StudyGraph
from engine.spec.naming import make_safe_path
from engine.status import state_counts

__all__ = [
    "RunOptions",
    "check_backends",
    "default_progress_stream",
    "make_study_id",
    "run_study",
]


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one study.

    Attributes:
        throttle: Max steps running at once; None = the spec's ``troupe:`` settings (local
            steps: the number of CPUs); 0 = unlimited.
        rlimit: Restarts after a timeout (None: the spec's, else Maestro's 1; 0 = unlimited).
        attempts: Runs of a failing step (None: the spec's, else Maestro's 1).
        dry_run: Write scripts, mark steps DRYRUN, run nothing.
        nats_url: Use this NATS server instead of an embedded one.
        credentials: Credentials for ``nats_url``.
        run_local: Run scheduler steps (nodes/procs) locally, ``$(LAUNCHER)`` removed.
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping a step (None: the
            spec's ``troupe.kill_grace``, else 10).
        progress: Where to draw live progress (a TTY), or None for none.
        pgen: The custom parameter generator file, copied into the study directory.
        reuse: An earlier study directory whose FINISHED steps with the same cache key
            are reused (state CACHED, workspace copied).
        use_cache: Record cache keys (and honour ``reuse``); False for ``--no-cache``.
    """

    throttle: int | None = None
    rlimit: int | None = None
    attempts: int | None = None
    dry_run: bool = False
    nats_url: str | None = None
    credentials: Credentials | None = None
    run_local: bool = False
    kill_grace: float | None = None
    progress: TextIO | None = None
    pgen: str | None = None
    reuse: str | None = None
    use_cache: bool = True


def make_study_id(name: str, now: dt.datetime) -> str:
    """A study id: ``<safe name>-<YYYYmmdd-HHMMSS>-<4 hex>`` (subject-safe)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in make_safe_path(name))
    return f"{safe}-{now.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def check_backends(graph: StudyGraph, *, dry_run: bool, run_local: bool) -> None:
    """Refuse a study whose batch type no adapter handles.

    Raises:
        ConfigError: naming the batch type.
    """
    btype = str(graph.batch.get("type") or "local")
    if btype not in ("local", "slurm", "flux") and not (dry_run or run_local):
        raise ConfigError(f"batch.type: unknown scheduler '{btype}' (local, slurm or flux)")


async def run_study(graph: StudyGraph, opts: RunOptions) -> StudyState:
    """Run ``graph`` to completion in this process and return its final state.

    Raises:
        ConfigError: the study directory exists, a dependency cannot be acquired, or a
            step needs a backend this version lacks.
        BusError: the NATS server cannot be started or reached.
    """
    check_backends(graph, dry_run=opts.dry_run, run_local=opts.run_local)
    step_policies(graph, CliOverrides(), run_local=opts.run_local)  # bad settings: fail early
    root = prepare_study_dir(graph, pgen=opts.pgen)
    study_id = make_study_id(graph.name, dt.datetime.now())
    log_path = root / "logs" / f"{graph.name}.log"
    with study_log_file(log_path):
        log = structlog.get_logger("troupe.run").bind(study_id=study_id)
        log.info("study_prepared", study_dir=str(root), steps=len(graph.steps))
        await acquire_dependencies(graph)
        cli = CliOverrides(throttle=opts.throttle, rlimit=opts.rlimit, attempts=opts.attempts,
                           kill_grace=opts.kill_grace)
        policies = step_policies(graph, cli, run_local=opts.run_local)
        limits = throttle_limits(graph, cli)
        kill_grace = opts.kill_grace
        if kill_grace is None:
            kill_grace = troupe_settings(graph).kill_grace
        async with AsyncExitStack() as stack:
            if opts.nats_url:
                url = opts.nats_url
            else:
                # Nothing resumes a `run`: its events survive a crash of any process (the
                # page cache), but are not fsynced one by one as under `serve`.
                server = await stack.enter_async_context(
                    open_embedded_server(root / "meta" / "nats", sync_always=False))
                url = server.url
            bus = await stack.enter_async_context(open_bus(url, opts.credentials))
            creds = opts.credentials or Credentials()
            adapter = make_backends(
                graph, study_id=study_id, run_local=opts.run_local,
                kill_grace=10.0 if kill_grace is None else kill_grace,
                notify=notify_env(url, study_id, creds.user, creds.password),
                adoptable=False,  # nothing resumes a `run`: no wrapper process per step
            ).adapter
            if not await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()]):
                log.warning("jetstream_unavailable", url=url, detail="events are not durable")
            keys = cache_keys(graph) if opts.use_cache else {}
            recovered = reuse_records(graph, keys, policies, reuse_dir=opts.reuse or "")
            if recovered is not None:
                log.info("steps_reused", cached=len(recovered.cached), total=len(graph.steps))
            runtime = StudyRuntime(
                graph, study_id=study_id, bus=bus, adapter=adapter, limits=limits,
                policies=policies, dry_run=opts.dry_run, status_path=root / "status.csv",
                recovered=recovered,
            )
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
            if not opts.dry_run:
                record_cache(graph, keys, runtime.records)
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
    counts = state_counts(runtime.records)
    total = len(runtime.records)
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    out.write(f"\r\x1b[K{runtime.graph.name}: {total} steps: {text}")
    if final:
        out.write("\n")
    out.flush()


def default_progress_stream() -> TextIO | None:
    """stderr if it is a terminal, else None (``run`` stays quiet when piped)."""
    return sys.stderr if sys.stderr.isatty() else None

