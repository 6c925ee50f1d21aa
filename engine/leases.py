"""Which engine hosts which study, when several share one bus: a lease per engine, and
the takeover of a dead engine's studies.

A study's entry names its host (``StudyEntry.host``, the engine id, stable per state
directory). An engine hosts its studies while its heartbeat in the ``workers`` bucket is
younger than ``LEASE``; once it is older, any other engine on the bus claims the study
(compare-and-swap on its entry: of two standbys, one wins) and resumes it as a restarted
engine would (what ran is re-adopted, or run again as a new attempt). The same engine
restarted on its state directory resumes its own studies at once. Workers' heartbeats
(``enginectl worker``) are kept in the same bucket.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Container
from typing import TYPE_CHECKING, Any

import anyio

from engine import subjects
from engine.errors import BusError, StoreError
from engine.messages import WorkerAlive

if TYPE_CHECKING:
    from engine.bus import Bus
    from engine.store import Store, StudyEntry

__all__ = ["HEARTBEAT", "LEASE", "Lease", "record_workers"]

HEARTBEAT = 5.0
"""Seconds between two heartbeats of an engine (its entry in the workers bucket)."""
LEASE = 3 * HEARTBEAT
"""An engine hosts its studies while its heartbeat is younger than this; after it, another
engine on the bus takes them over."""


class Lease:
    """One engine's view of who hosts what (see the module docstring)."""

    def __init__(self, store: Store, worker: str) -> None:
        self.store = store
        self.worker = worker

    async def live_engines(self) -> set[str]:
        """The engines whose heartbeat is fresh (within ``LEASE`` seconds)."""
        now = time.time()
        return {w.worker for w in await self.store.list_workers()
                if w.kind == "engine" and now - w.heartbeat < LEASE}

    async def may_host(self, entry: StudyEntry, hosted: Container[str]) -> bool:
        """Whether this engine may host a RUNNING study now: it is its own (or nobody's),
        or its host's lease ran out and this engine claimed it first."""
        if entry.study_id in hosted:
            return False
        if entry.host in ("", self.worker):
            return True
        if entry.host in await self.live_engines():
            return False  # another live engine hosts it
        claimed = await self.store.claim_study(entry.study_id, host=self.worker,
                                               expected=entry.host)
        return claimed is not None

    async def take_over(self, hosted: Container[str],
                        launch: Callable[[StudyEntry], Awaitable[Any]],
                        stopping: Callable[[], bool], interval: float = LEASE / 3) -> None:
        """Every ``interval`` seconds, host the RUNNING studies whose engine died."""
        import structlog

        log = structlog.get_logger("troupe.serve")
        while True:
            await anyio.sleep(interval)
            if stopping():
                return
            try:
                for entry in await self.store.list_studies(state="RUNNING"):
                    if entry.host not in ("", self.worker) and await self.may_host(entry, hosted):
                        log.warning("study_taken_over", study_id=entry.study_id,
                                    previous=entry.host)
                        await launch(entry)
            except (StoreError, BusError) as exc:
                log.warning("takeover_scan_failed", error=str(exc))


async def record_workers(bus: Bus, store: Store, log: Any) -> None:
    """Keep the workers' heartbeats in the ``workers`` bucket (``enginectl db list
    worker``); a worker that stops is removed."""
    from engine.store import WorkerEntry

    async with bus.subscribe(subjects.WORKERS_ALIVE) as beats:
        async for msg in beats:
            if not isinstance(msg, WorkerAlive):
                continue
            try:
                if msg.stopping:
                    await store.delete_worker(msg.worker)
                    continue
                await store.put_worker(WorkerEntry(
                    worker=msg.worker, host=msg.host, pid=msg.pid, started=msg.started,
                    heartbeat=time.time(), kind="worker", queues=msg.queues,
                    concurrency=msg.concurrency, running=msg.running))
            except StoreError as exc:
                log.warning("worker_not_recorded", worker=msg.worker, error=str(exc))
