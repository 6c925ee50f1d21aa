"""Which adapter runs a study, and how in-flight attempts are found after a restart.

A study runs on the adapter of its ``batch.type``: ``local`` → ``LocalAdapter``;
``slurm`` → ``SlurmAdapter`` and ``flux`` → ``FluxAdapter``, each running the steps that
ask for no ``nodes``/``procs`` through a ``LocalAdapter`` (Maestro's rule). ``--local``
runs everything locally with ``$(LAUNCHER)`` removed. A Merlin step with its own
``batch: {type}`` runs on that type's adapter (``adapters.routed``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from adapters.base import DEFAULT_KILL_GRACE, Adapter, JobHandle, JobRequest, JobResult
from adapters.descendants import STUDY_VAR
from adapters.local import LocalAdapter
from adapters.routed import RoutedAdapter
from engine import subjects
from engine.errors import ConfigError
from engine.spec.graph import StudyGraph

if TYPE_CHECKING:
    from engine.bus import Bus
    from engine.store import StepEntry

__all__ = ["BACKENDS", "Backends", "check_backends", "make_backends", "notify_env"]

BACKENDS = ("local", "slurm", "flux")
"""The batch types this version runs."""


def check_backends(graph: StudyGraph, *, dry_run: bool, run_local: bool) -> None:
    """Refuse a study whose batch type no adapter handles (a dry run or ``--local`` run
    needs none).

    Raises:
        ConfigError: naming the batch type.
    """
    btype = graph.batch_type
    if btype not in BACKENDS and not (dry_run or run_local):
        raise ConfigError(f"batch.type: unknown scheduler '{btype}' (local, slurm or flux)")


class Backends:
    """The adapter a study submits to, and its local adapter."""

    def __init__(self, adapter: Adapter, local: LocalAdapter) -> None:
        self.adapter = adapter
        self.local = local

    async def lookup_inflight(
        self, graph: StudyGraph, study_id: str, entries: Mapping[str, StepEntry]
    ) -> dict[str, JobHandle | JobResult | None]:
        """For every step whose stored entry has an attempt in flight, find its job:
        a local one through its workspace files, a scheduler one by its idempotency key.
        Interrupted attempts are not looked up (they run again)."""
        found: dict[str, JobHandle | JobResult | None] = {}
        for name, e in entries.items():
            if e.final or e.interrupted or not e.intent_attempt:
                continue
            if e.state not in ("PENDING", "RUNNING") and not (
                e.state in ("WAITING", "INITIALIZED") and e.intent_attempt > e.attempt
            ):
                continue  # (a WAITING entry, or a chain's child, names its next attempt)
            inst = graph.by_name.get(name)
            if inst is None:
                continue
            key = e.intent_key or f"{study_id}/{name}/{e.intent_attempt}"
            found[name] = await self.adapter.lookup(
                JobRequest(step=inst, attempt=e.intent_attempt, key=key))
        return found


def notify_env(url: str, study_id: str, user: str | None = None,
               password: str | None = None) -> dict[str, str]:
    """The job environment that makes a scheduler job's trailer report over NATS."""
    env = {"TROUPE_NOTIFY": f"{sys.executable} -m engine.notify {url} "
                            f"{subjects.job_reports(study_id)}"}
    if user:
        env["TROUPE_NOTIFY_USER"] = user
        env["TROUPE_NOTIFY_PASSWORD"] = password or ""
    return env


def make_backends(
    graph: StudyGraph, *, study_id: str, run_local: bool = False,
    kill_grace: float = DEFAULT_KILL_GRACE,
    notify: dict[str, str] | None = None, adoptable: bool = True,
    bus: Bus | None = None,
) -> Backends:
    """Build the adapters for ``graph`` (``adoptable``: local steps can be adopted by a
    restarted engine; see ``LocalAdapter``). With ``troupe.executor: workers`` the local
    steps become tasks for workers, queued on ``bus`` (``adapters.workers``).

    Raises:
        ConfigError: an unknown ``batch.type``.
    """
    shell = str(graph.batch.get("shell") or "/bin/bash")
    env = {STUDY_VAR: study_id, "TROUPE_STUDY_DIR": graph.study_dir}
    local = LocalAdapter(shell=shell, kill_grace=kill_grace, strip_launcher=run_local, env=env,
                         adoptable=adoptable, merlin=graph.merlin)
    btype = graph.batch_type
    others = {s.batch_type for s in graph.steps if s.batch_type} - {btype, "local"}
    job_env = {**env, **(notify or {})}
    if others and not run_local:  # Merlin's per-step batch type: one adapter per type
        main = local if btype == "local" else _scheduler(btype, graph, shell, job_env, local)
        routed = RoutedAdapter(main, {t: _scheduler(t, graph, shell, job_env, local)
                                      for t in sorted(others)}, local=local)
        return Backends(routed, local)
    if run_local or btype == "local":
        executor = (graph.troupe.get("executor") or "local") if not run_local else "local"
        if executor == "workers" and bus is not None:
            timeout = float(graph.troupe.get("worker_timeout") or 30.0)
            return Backends(_workers(bus, local, study_id, job_env, kill_grace, timeout), local)
        return Backends(local, local)
    return Backends(_scheduler(btype, graph, shell, job_env, local), local)


def _workers(bus: Bus, local: LocalAdapter, study_id: str, env: dict[str, str],
             kill_grace: float, lost_after: float) -> Adapter:
    from adapters.workers import WorkersAdapter
    from engine.bus import placed
    from engine.workqueue import anchor_task_stream, ensure_task_stream, publish_task

    ready: list[bool] = []

    async def queue_task(queue: str, payload: bytes, key: str) -> None:
        if not ready:
            await placed(lambda: ensure_task_stream(bus))
            await anchor_task_stream(bus)
            ready.append(True)
        await publish_task(bus, queue, payload, key=key)

    return WorkersAdapter(local, queue_task=queue_task, publish=bus.publish, study_id=study_id,
                          report_subject=subjects.job_reports(study_id), env=env,
                          kill_grace=kill_grace, lost_after=lost_after,
                          poll=min(2.0, lost_after / 4))


def _scheduler(btype: str, graph: StudyGraph, shell: str, job_env: dict[str, str],
               local: LocalAdapter) -> Adapter:
    # The scheduler adapters are imported only when a study needs one (a local study's
    # start does not pay for them).
    if btype == "slurm":
        from adapters.slurm import SlurmAdapter

        return SlurmAdapter(graph.batch, shell=shell, env=job_env, local=local)
    if btype == "flux":
        from adapters.flux import FluxAdapter

        return FluxAdapter(graph.batch, shell=shell, env=job_env, local=local)
    raise ConfigError(f"batch.type: unknown scheduler '{btype}' (local, slurm or flux)")
