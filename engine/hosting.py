"""One way to host a study: what ``enginectl run`` and the engine service (``serve``)
both call to turn an expanded study and its options into a runtime ready to run.

``check_study`` refuses what cannot run before anything is written (an unknown batch
type, bad settings, an unusable ``--reuse``). ``build_runtime`` assembles the rest: the
step policies and throttle limits (command line over spec over defaults,
``engine.settings``), the adapters (``engine.backends``), the cache keys and the reused
steps (``engine.cache``), or, for a study that was running when an engine stopped, the
records rebuilt from the store with its in-flight attempts looked up through the
adapters (``engine.machines.recovery``), and finally the ``StudyRuntime``. A study hosted
with a store (``serve``) can be resumed: its local steps run under the claiming wrapper;
one hosted without (``run``) cannot, and its steps run directly.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec

from adapters.base import Adapter
from engine.actors.study import StudyRuntime
from engine.backends import Backends, check_backends, make_backends, notify_env
from engine.bus import Bus
from engine.cache import cache_keys, load_previous, record_cache, reuse_cached
from engine.machines.recovery import Recovered, recover_records
from engine.merlin import prepare_merlin
from engine.settings import (
    CliOverrides,
    kill_grace,
    step_policies,
    throttle_limits,
)
from engine.spec.graph import StudyGraph
from engine.spec.naming import make_safe_path

if TYPE_CHECKING:
    from engine.store import StepEntry, Store

__all__ = ["HostedStudy", "Start", "StudyOptions", "build_runtime", "check_study",
           "make_study_id"]


class StudyOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a study runs, as ``run``'s options and ``submit``'s request give it (and as
    the store keeps it for a restart).

    Attributes:
        throttle: Max steps running at once; None = the spec's ``troupe:`` settings (local
            steps: the number of CPUs); 0 = unlimited.
        rlimit: Restarts after a timeout (None: the spec's, else Maestro's 1; 0 = unlimited).
        attempts: Runs of a failing step (None: the spec's, else Maestro's 1).
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping a step (None: the
            spec's ``troupe.kill_grace``, else the adapters' default).
        dry_run: Write scripts, mark steps DRYRUN, run nothing.
        run_local: Run scheduler steps (nodes/procs) locally, ``$(LAUNCHER)`` removed.
        reuse: An earlier study directory whose FINISHED steps with the same cache key
            are reused (state CACHED, workspace copied); "" for none.
        use_cache: Record cache keys (and honour ``reuse``); False for ``--no-cache``.
        samples_file: ``--samplesfile``: a Merlin study's samples, instead of its
            ``merlin.samples`` file and generate command.
        per_sample_status: status.csv has a row per sample (else per state, counted).
        strict: An unresolved ``$(TOKEN)`` is an error (at validation and at submission).
    """

    throttle: int | None = None
    rlimit: int | None = None
    attempts: int | None = None
    kill_grace: float | None = None
    dry_run: bool = False
    run_local: bool = False
    reuse: str = ""
    use_cache: bool = True
    samples_file: str = ""
    per_sample_status: bool = False
    strict: bool = False

    @classmethod
    def from_stored(cls, options: Mapping[str, object]) -> StudyOptions:
        """The options a ``StudyEntry`` kept (other keys, such as ``pgen``, are the
        loader's and are ignored)."""
        known = {k: v for k, v in options.items() if k in cls.__struct_fields__}
        known["reuse"] = known.get("reuse") or ""
        return msgspec.convert(known, cls)

    def overrides(self) -> CliOverrides:
        """The options that override the spec's settings."""
        return CliOverrides(throttle=self.throttle, rlimit=self.rlimit, attempts=self.attempts,
                            kill_grace=self.kill_grace)


class Start(enum.Enum):
    """How a hosted study begins."""

    FRESH = "fresh"  # a new study (earlier results with the same cache key are reused)
    RESUME = "resume"  # it was running when an engine stopped: carry on
    RESTART = "restart"  # ``restart``: run its failed, cancelled and timed-out steps again


class HostedStudy(msgspec.Struct, kw_only=True, dict=True):
    """A study ready to run, and what its host needs at its end.

    Attributes:
        runtime: The study's runtime.
        backends: Its adapters.
        keys: The steps' cache keys (empty with ``--no-cache`` or a dry run).
    """

    runtime: StudyRuntime
    backends: Backends
    keys: dict[str, str]

    @property
    def adapter(self) -> Adapter:
        """The adapter the study submits to."""
        return self.backends.adapter

    def record_cache(self) -> None:
        """Record the cache keys of what ended FINISHED or CACHED (for a later reuse).

        Raises:
            OSError: ``meta/cache.json`` or the cache index could not be written.
        """
        record_cache(self.runtime.graph, self.keys, self.runtime.records)


def make_study_id(name: str, now: dt.datetime | None = None) -> str:
    """A study id: ``<safe name>-<YYYYmmdd-HHMMSS>-<4 hex>`` (subject-safe)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in make_safe_path(name))
    now = now or dt.datetime.now()
    return f"{safe}-{now.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def check_study(graph: StudyGraph, opts: StudyOptions) -> None:
    """Refuse a study that cannot run as asked, before anything is written.

    Raises:
        ConfigError: an unknown batch type, an unusable ``reuse`` directory.
        SpecError: settings that cannot be applied (a walltime, an undeclared group).
    """
    check_backends(graph, dry_run=opts.dry_run, run_local=opts.run_local)
    step_policies(graph, opts.overrides(), run_local=opts.run_local)
    if opts.reuse and opts.use_cache:
        load_previous(opts.reuse)


async def build_runtime(
    graph: StudyGraph, opts: StudyOptions, *, study_id: str, bus: Bus,
    start: Start = Start.FRESH, store: Store | None = None, worker: str = "",
    notify_user: str | None = None, notify_password: str | None = None,
    stored: Mapping[str, StepEntry] | None = None,
    engine_slots: anyio.CapacityLimiter | None = None,
) -> HostedStudy:  # fmt: skip
    """Assemble the runtime of ``graph`` (see the module docstring).

    Args:
        graph: The expanded study (its directory prepared).
        opts: How to run it.
        study_id: Its id.
        bus: The connected bus.
        start: A fresh study, or one to resume or restart from ``store``.
        store: The durable state (``serve``); None for a study nothing resumes (``run``).
        worker: The hosting engine's id, recorded with each step.
        notify_user, notify_password: The credentials scheduler jobs report their exit
            status with (``engine.notify``).
        stored: For a restart without a store (``enginectl restart DIR`` of a study of
            ``run``): the steps known to have ended (nothing is in flight: the processes
            of a ``run`` die with it).
        engine_slots: The engine-wide limit of ``serve --max-running`` (None: none).

    Raises:
        ConfigError: an unknown batch type, an unreadable input file or ``reuse`` record.
        SpecError: settings that cannot be applied.
        StatusError: a scheduler could not be asked about the in-flight attempts.
        SamplesError: a Merlin study's samples could not be made or read.
    """
    samples = None
    if graph.merlin:
        samples = await prepare_merlin(graph, samples_file=opts.samples_file or None)
    cli = opts.overrides()
    policies = step_policies(graph, cli, run_local=opts.run_local)
    backends = make_backends(
        graph, study_id=study_id, run_local=opts.run_local, kill_grace=kill_grace(graph, cli),
        notify=notify_env(bus.url, study_id, notify_user, notify_password),
        adoptable=store is not None,  # nothing resumes a `run`: no wrapper per step
        bus=bus,
    )
    keys = cache_keys(graph) if opts.use_cache and not opts.dry_run else {}
    if samples is not None:  # a key does not cover the samples: nothing on them is reused
        tainted = {s.name for s in graph.steps if s.sampled}
        for name in list(tainted):
            tainted |= graph.descendants(name)
        keys = {k: v for k, v in keys.items() if k not in tainted}
    recovered: Recovered | None = None
    cached: list[str] = []
    if start is Start.FRESH:
        cached = reuse_cached(graph, keys, reuse_dir=opts.reuse)
    elif store is not None:
        stored = await store.get_steps(study_id, (s.name for s in graph.steps))
        found = await backends.lookup_inflight(graph, study_id, stored)
        recovered = recover_records(graph, stored, policies, found,
                                    rerun_failed=start is Start.RESTART)
    else:
        if stored is None:
            raise ValueError("a study is resumed from a store or from its ended steps")
        found = {}
        recovered = recover_records(graph, stored, policies, found,
                                    rerun_failed=start is Start.RESTART)
    runtime = StudyRuntime(
        graph, study_id=study_id, bus=bus, adapter=backends.adapter,
        limits=throttle_limits(graph, cli), policies=policies, dry_run=opts.dry_run,
        status_path=Path(graph.study_dir) / "status.csv", store=store,
        recovered=recovered, cached=cached, worker=worker, samples=samples,
        per_sample_status=opts.per_sample_status, strict=opts.strict,
        engine_slots=engine_slots,
    )
    return HostedStudy(runtime=runtime, backends=backends, keys=keys)
