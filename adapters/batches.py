"""The local adapter's batches: a sampled step's samples, queued in the helper process.

Under ``enginectl run`` the samples of a step are handed to the spawner's helper
(``adapters.spawner``) a batch at a time, as one line, and the helper keeps at most
``limit`` of them running: when one ends it starts the next at once, without a round trip
through the engine, which hears about starts and ends in batches too. Cancelling drops
the samples still waiting and stops the running ones as ``LocalAdapter.cancel`` stops a
job: SIGTERM to the group (and to the processes that left it), SIGKILL after the grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from adapters.base import Batches, JobRequest
from adapters.descendants import JOB_KEY_VAR, kill_marked

if TYPE_CHECKING:
    from adapters.spawner import Spawner

__all__ = ["LocalBatches"]

UNLIMITED = 1 << 30


class _Sample:
    """One job of a batch, as the spawner reports it (a ``Sink``)."""

    __slots__ = ("batches", "cancelled", "id", "key", "pid")

    def __init__(self, batches: LocalBatches, key: str) -> None:
        self.batches = batches
        self.key = key
        self.id = 0
        self.pid = 0
        self.cancelled = False

    def on_start(self, pid: int) -> None:
        self.pid = pid
        if self.cancelled:  # started while its drop was on its way: stop it now
            self.batches.stop(self)
        self.batches.started(self.key, str(pid))

    def on_end(self, code: int | None, error: str) -> None:
        self.batches.end(self, code, error)


class LocalBatches(Batches):
    """One step's samples through the helper (see the module docstring).

    Args:
        spawner: The helper.
        start_args: The spawner arguments of one request (``LocalAdapter.start_args``).
        group: The helper's queue for them (the step's name).
        limit: At most this many run at once (0: no limit).
        started: Called with ``(key, pid)`` once a sample runs.
        ended: Called with ``(key, exit code, error)`` once it ended (see
            ``Adapter.batches``).
        kill_grace: Seconds between SIGTERM and SIGKILL.
    """

    def __init__(self, spawner: Spawner, start_args: Callable[[JobRequest], dict[str, object]], *,
                 group: str, limit: int, started: Callable[[str, str], None],
                 ended: Callable[[str, int | None, str], None], kill_grace: float) -> None:
        self._spawner = spawner
        self._start_args = start_args
        self._group = group
        self._limit = limit or UNLIMITED
        self.started = started
        self._ended = ended
        self._kill_grace = kill_grace
        self.jobs: dict[str, _Sample] = {}  # key -> a job not yet ended

    def submit(self, requests: Sequence[JobRequest]) -> None:
        for request in requests:
            job = self.jobs[request.key] = _Sample(self, request.key)
            try:
                args = self._start_args(request)
            except (OSError, ValueError) as exc:
                self.end(job, None, f"{type(exc).__name__}: {exc}")
                continue
            job.id = self._spawner.queue(**args, sink=job, group=self._group,  # type: ignore[arg-type]
                                         limit=self._limit)

    def cancel(self, keys: Sequence[str]) -> None:
        waiting = []
        for key in keys:
            job = self.jobs.get(key)
            if job is None or job.cancelled:
                continue
            job.cancelled = True
            if job.pid:
                self.stop(job)
            else:
                waiting.append(job.id)
        if waiting:
            self._spawner.drop(waiting)

    def stop(self, job: _Sample) -> None:
        """SIGTERM the job's group and marked processes; SIGKILL them after the grace."""
        _signal(job, signal.SIGTERM)
        asyncio.get_running_loop().call_later(
            self._kill_grace, lambda: self.jobs.get(job.key) is job and _signal(job, signal.SIGKILL))

    def end(self, job: _Sample, code: int | None, error: str) -> None:
        self.jobs.pop(job.key, None)
        if job.cancelled and job.pid:
            _signal(job, signal.SIGKILL)  # whatever the cancelled sample started dies too
        self._ended(job.key, code, error)

    def kill_all_now(self) -> None:
        self.cancel(list(self.jobs))
        for job in list(self.jobs.values()):
            if job.pid:
                _signal(job, signal.SIGKILL)


def _signal(job: _Sample, sig: int) -> bool:
    try:
        os.killpg(job.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    kill_marked(JOB_KEY_VAR, job.key, sig)  # those that left the group
    return True
