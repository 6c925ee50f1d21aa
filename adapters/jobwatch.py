"""One shared completion watcher per scheduler adapter: pushed exit files, batched reconciling.

A scheduled job's script ends with a trailer that writes its exit status into the
workspace (:func:`adapters.slurm_script.wrap_with_trailer`). :class:`JobWatcher` turns
those files into :class:`~adapters.base.JobResult` s for every ``wait()`` in flight, and
is also the safety net: one batched backend query (one ``squeue``/``sacct``, one
``flux jobs``) per ``reconcile_interval`` for *all* outstanding jobs, which catches jobs
that never reach the trailer (cancelled, timed out, killed, node failure).

There is no background task to start or stop. The first waiter becomes the *leader* and
runs the ticks (a ``stat`` per outstanding exit file every ``watch_interval``, the batched
query when due); the others sleep on an event. When the leader's own job ends, or its
``wait`` is cancelled, it hands over and another waiter leads. So every task stays inside
the caller's task tree, and nothing polls when nobody waits.

Rules (Invariant: a watch is resolved at most once):

* exit file ``0`` → COMPLETED at once;
* exit file ``N != 0`` → the backend's terminal state decides between FAILED (exit ``N``),
  TIMEOUT, CANCELLED, ...; a query is made within ``confirm_interval``; if the backend
  still has no terminal record after ``confirm_grace`` s, FAILED with ``N``;
* no exit file → the backend's terminal state; "no row" is *unknown*, not failed, and
  becomes LOST only after ``lost_after`` s without any row;
* queries that fail for ``lost_after`` s make ``wait`` raise ``StatusError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import msgspec
import structlog

from adapters.base import JobOutcome, JobResult, StatusError

__all__ = ["JobState", "JobWatcher", "Query", "read_exit_file"]


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend query says about one job.

    Attributes:
        outcome: How it ended, or None while it is queued or running.
        exit_code: The exit code if the backend knows it (negative: killed by a signal).
        detail: The backend's own words (``"CANCELLED by 0"``, ``"TIMEOUT 0:0"``).
    """

    outcome: JobOutcome | None
    exit_code: int | None = None
    detail: str = ""


#: A batched backend query: job ids in, states of the ids it has rows for out.
#: It raises ``StatusError`` when the query itself failed.
Query = Callable[[Sequence[str]], Awaitable[Mapping[str, JobState]]]


class _Watch:
    __slots__ = ("error", "exit_file", "job_id", "last_info", "rc", "rc_seen", "result",
                 "waiters")  # fmt: skip

    def __init__(self, job_id: str, exit_file: Path | None, now: float) -> None:
        self.job_id = job_id
        self.exit_file = exit_file
        self.waiters = 0
        self.result: JobResult | None = None
        self.error: StatusError | None = None
        self.rc: int | None = None  # from the exit file
        self.rc_seen = 0.0
        self.last_info = now  # last time the backend had a row (or the watch began)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


def read_exit_file(path: Path) -> int | None:
    """Read a trailer's exit file: the status, or None if it is not there (yet).

    Raises:
        StatusError: the file exists but does not hold an integer.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StatusError(f"cannot read exit file {path}: {exc}") from exc
    try:
        return int(text.strip())
    except ValueError as exc:
        raise StatusError(f"exit file {path} holds {text.strip()!r}, not a status") from exc


class JobWatcher:
    """Waits for many jobs at once with one stat loop and one batched query per interval.

    Args:
        query: The backend's batched status query.
        backend: The adapter's name, for logs.
        watch_interval: Seconds between exit-file checks.
        reconcile_interval: Seconds between batched backend queries.
        confirm_interval: Minimum seconds between queries while a non-zero exit file
            waits for the backend's terminal state.
        confirm_grace: Seconds a non-zero exit file waits for that state before it is
            reported as FAILED on its own.
        lost_after: Seconds without any backend row (or any successful query) before a
            job is LOST (or ``wait`` raises ``StatusError``).
    """

    def __init__(
        self, query: Query, *, backend: str, watch_interval: float = 0.1,
        reconcile_interval: float = 2.0, confirm_interval: float = 0.25,
        confirm_grace: float = 10.0, lost_after: float = 120.0,
    ) -> None:  # fmt: skip
        self._query = query
        self.watch_interval = watch_interval
        self.reconcile_interval = reconcile_interval
        self.confirm_interval = confirm_interval
        self.confirm_grace = confirm_grace
        self.lost_after = lost_after
        self._log = structlog.get_logger(f"troupe.{backend}").bind(backend=backend)
        self._watches: dict[str, _Watch] = {}
        self._leading = False
        self._changed = anyio.Event()  # set (and replaced) whenever a watch resolves
        self._kick = anyio.Event()
        self._kicked = False
        self._next_query = 0.0
        self._last_query = float("-inf")
        self.queries = 0  # batched queries made so far (for tests and statistics)

    def outstanding(self) -> list[str]:
        """Job ids currently being waited for."""
        return [w.job_id for w in self._watches.values() if not w.done]

    def report(self, exit_file: str, exit_code: int) -> bool:
        """A job's trailer told us (over NATS) what it wrote to ``exit_file``: take it as
        read and wake the watcher at once.

        Returns:
            Whether a watched job has that exit file.
        """
        for w in self._watches.values():
            if w.exit_file is not None and str(w.exit_file) == exit_file and w.rc is None:
                w.rc = exit_code
                w.rc_seen = anyio.current_time()
                self._kick.set()  # wakes the leader's sleep; no forced backend query
                return True
        return False

    def kick(self) -> None:
        """Make the next tick query the backend now (e.g. right after a cancel)."""
        self._kicked = True
        self._kick.set()

    async def wait_changed(self) -> None:
        """Return when any watched job next resolves (or leadership changes hands)."""
        await self._changed.wait()

    async def wait(self, job_id: str, exit_file: Path | None) -> JobResult:
        """Wait until the job has ended and say how.

        Args:
            job_id: The backend's job id.
            exit_file: Where the job's trailer writes its status (None: no trailer).

        Returns:
            The job's result.

        Raises:
            StatusError: the backend could not be queried for ``lost_after`` s, or the
                exit file is corrupt.
        """
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch(job_id, exit_file, anyio.current_time())
        watch.waiters += 1
        try:
            while not watch.done:
                if self._leading:
                    changed = self._changed
                    await changed.wait()
                else:
                    await self._lead(watch)
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                self._watches.pop(job_id, None)
        if watch.error is not None:
            raise StatusError(str(watch.error), watch.error.step) from watch.error
        assert watch.result is not None
        return watch.result

    async def _lead(self, mine: _Watch) -> None:
        self._leading = True
        try:
            while not mine.done:
                await self._tick()
                if mine.done:
                    break
                with anyio.move_on_after(self.watch_interval):
                    await self._kick.wait()
                if self._kick.is_set():
                    self._kick = anyio.Event()
        finally:
            self._leading = False
            self._notify()  # a follower takes over, or learns its job is done

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _tick(self) -> None:
        now = anyio.current_time()
        pending = [w for w in self._watches.values() if not w.done]
        resolved = False
        confirming = False
        for w in pending:
            if w.rc is None and w.exit_file is not None:
                try:
                    w.rc = read_exit_file(w.exit_file)
                except StatusError as exc:
                    w.error = exc
                    resolved = True
                    continue
                if w.rc is not None:
                    w.rc_seen = now
            if w.rc == 0:
                w.result = JobResult(outcome=JobOutcome.COMPLETED, exit_code=0,
                                     detail="exit file: 0")  # fmt: skip
                resolved = True
            elif w.rc is not None:
                confirming = True
        pending = [w for w in pending if not w.done]
        due = now >= self._next_query or self._kicked or (
            confirming and now - self._last_query >= self.confirm_interval
        )
        if pending and due:
            resolved |= await self._reconcile(pending)
        if resolved:
            self._notify()

    async def _reconcile(self, pending: list[_Watch]) -> bool:
        self._kicked = False
        ok = True
        failure: StatusError | None = None
        try:
            states = await self._query([w.job_id for w in pending])
        except StatusError as exc:
            self._log.warning("status_query_failed", error=str(exc), jobs=len(pending))
            states, ok, failure = {}, False, exc
        now = anyio.current_time()
        self.queries += 1
        self._last_query = now
        self._next_query = now + self.reconcile_interval
        resolved = False
        for w in pending:
            if w.done:
                continue
            state = states.get(w.job_id)
            if state is not None:
                w.last_info = now
            if state is not None and state.outcome is not None:
                w.result = self._result(w, state)
            elif w.rc is not None and now - w.rc_seen > self.confirm_grace:
                # The trailer's word stands when the scheduler keeps no terminal record.
                w.result = JobResult(outcome=JobOutcome.FAILED, exit_code=w.rc,
                                     detail=f"exit file: {w.rc}")  # fmt: skip
            elif state is None and now - w.last_info > self.lost_after:
                if ok:
                    w.result = JobResult(
                        outcome=JobOutcome.LOST,
                        detail=f"no record of job {w.job_id} for {self.lost_after:g} s",
                    )  # fmt: skip
                else:
                    w.error = StatusError(
                        f"job {w.job_id}: status unknown for {self.lost_after:g} s: {failure}"
                    )  # fmt: skip
            else:
                continue
            resolved = True
            self._log.debug("job_resolved", job_id=w.job_id,
                            outcome=w.result.outcome if w.result else None)  # fmt: skip
        return resolved

    def _result(self, w: _Watch, state: JobState) -> JobResult:
        if w.rc is None and w.exit_file is not None:
            # The trailer may have written just after this tick's check.
            try:
                w.rc = read_exit_file(w.exit_file)
            except StatusError:
                w.rc = None
        outcome = state.outcome
        assert outcome is not None
        if outcome is JobOutcome.COMPLETED:
            code: int | None = 0
        elif outcome is JobOutcome.FAILED and w.rc is not None:
            code = w.rc
        else:
            code = state.exit_code if state.exit_code is not None else w.rc
        return JobResult(outcome=outcome, exit_code=code, detail=state.detail)
