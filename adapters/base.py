"""The one small protocol every backend implements, and the adapters' exception tree.

An adapter writes a step's script, submits it, reports its completion (pushed where the
backend allows), cancels it, and finds it again after an engine restart (``Adapter``
lists every operation the engine calls). Foreign errors (``OSError``, ``CalledProcessError``,
parse failures) are translated at this edge with ``map_exceptions`` and re-raised as
``AdapterError`` subclasses with ``raise ... from``. ``JobOutcome``, the vocabulary of a
job's end, is defined in ``engine.messages`` (the supervisor judges it) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import abc

import msgspec

from engine.messages import JobOutcome
from engine.spec.graph import StepInstance

__all__ = [
    "Adapter",
    "AdapterError",
    "Batches",
    "CancelError",
    "DEFAULT_KILL_GRACE",
    "JobHandle",
    "JobOutcome",
    "JobRequest",
    "JobResult",
    "StatusError",
    "SubmitError",
    "map_exceptions",
]


class AdapterError(Exception):
    """Base of the errors an adapter raises.

    Attributes:
        step: The step instance concerned, if any.
    """

    def __init__(self, message: str, step: str = "") -> None:
        self.step = step
        super().__init__(message)


class SubmitError(AdapterError):
    """Raised by ``submit`` when the job could not be started or queued.

    Attributes:
        retryable: True for transient causes (a busy controller), False otherwise.
    """

    def __init__(self, message: str, step: str = "", *, retryable: bool = False) -> None:
        super().__init__(message, step)
        self.retryable = retryable


class StatusError(AdapterError):
    """Raised by ``wait``/``poll`` when a job's state cannot be determined."""


class CancelError(AdapterError):
    """Raised by ``cancel`` when the backend refused or failed to stop a job."""


class JobHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter returns for a submitted job.

    Attributes:
        step: The step instance name.
        attempt: The attempt number this job runs.
        job_id: The backend's id (a pid for local jobs).
        backend: The adapter's name.
    """

    step: str
    attempt: int
    job_id: str
    backend: str


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """The end of a job.

    Attributes:
        outcome: How it ended.
        exit_code: The exit code if known (negative: killed by that signal).
        detail: The backend's words (e.g. Slurm's state line), for humans.
    """

    outcome: JobOutcome
    exit_code: int | None = None
    detail: str = ""


class JobRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What to run: one attempt of one step.

    Attributes:
        step: The step instance.
        attempt: The attempt number (1 for the first submission).
        key: The attempt's idempotency key; a backend that can label jobs (Slurm's job
            name or comment, Flux's job name) records it so the job can be found again.
        restart: Run the step's restart script instead of its command.
        name: The engine's name for the job's step (its handles carry it): the instance
            name, or for one sample of a sampled step the sample's record name, while
            ``step.name`` names its files, as Merlin names them.
        bulk: One of many like jobs started together (a sample of a sampled step): a
            backend may start it in a way that costs less per job and more per hand-off
            (the local adapter's helper process under ``run``).
    """

    step: StepInstance
    attempt: int
    key: str
    restart: bool = False
    name: str = ""
    bulk: bool = False

    @property
    def actor(self) -> str:
        """The name the job's handle carries (``name``, else the step's)."""
        return self.name or self.step.name


DEFAULT_KILL_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL when a job is stopped, unless the spec
(``troupe.kill_grace``) or the command line says otherwise."""


class Adapter(abc.ABC):
    """A backend: local processes, Slurm or Flux (or a test's fake).

    Declares every operation the engine calls, in the way anyio's ``AsyncBackend``
    declares its backends: the four a backend must implement (``write_script``,
    ``submit``, ``wait``, ``cancel``), and the ones with a default for a backend that has
    nothing to do (``prepare``, ``lookup``, ``kill_all_now``, ``report``, ``cleanup``,
    ``batches``).

    Attributes:
        name: The backend's name (``JobHandle.backend``, the ``adapter:<name>`` throttle
            scope).
        takes_reports: Its jobs push their exit status over NATS (``engine.notify``),
            which the engine hands to ``report``.
    """

    name: ClassVar[str] = ""
    takes_reports: ClassVar[bool] = False

    @abc.abstractmethod
    def write_script(self, step: StepInstance) -> Path:
        """Write the step's script(s) into its workspace and return the main script."""

    @abc.abstractmethod
    async def submit(self, request: JobRequest) -> JobHandle:
        """Start (or queue) one attempt of a step.

        Raises:
            SubmitError: the job could not be started.
        """

    async def started(self, handle: JobHandle) -> None:
        """Return once the job runs (or ended, or was cancelled): until then the step is
        PENDING and its walltime does not count. The default: a submitted job runs."""
        del handle

    @abc.abstractmethod
    async def wait(self, handle: JobHandle) -> JobResult:
        """Wait for the job to end and say how it ended.

        Raises:
            StatusError: the outcome cannot be determined.
        """

    @abc.abstractmethod
    async def cancel(self, handle: JobHandle) -> None:
        """Stop the job and everything it started. Cancelling an ended job is a no-op.

        Raises:
            CancelError: the backend failed to stop it.
        """

    def prepare(self, step: StepInstance) -> None:  # noqa: B027 - a no-op by default
        """Get a step ready ahead of its submission (the engine calls it for the next
        step of a chain while its parent runs), so that submitting it costs less.
        Optional: the default does nothing.

        Raises:
            OSError: the files could not be written (the submission tries again).
        """

    async def lookup(self, request: JobRequest) -> JobHandle | JobResult | None:
        """Find an attempt submitted before an engine restart, by its step, attempt and
        key, so that the engine re-adopts it instead of running it again.

        Returns:
            A handle to ``wait`` on if the job still runs, its result if it ended, or
            None if it never started or left no trace (the attempt is then lost and the
            step runs again). The default finds nothing.

        Raises:
            StatusError: the backend could not be asked.
        """
        return None

    async def cleanup(self) -> None:  # noqa: B027 - a no-op by default
        """The study ended: stop whatever its jobs left running (a daemon a step
        started). The default does nothing."""

    def kill_all_now(self) -> None:  # noqa: B027 - a no-op by default
        """Kill every job this adapter started, at once (a second Ctrl-C).
        The default does nothing: ``cancel`` is the backend's only way to stop a job."""

    def report(self, exit_file: str, exit_code: int) -> bool:
        """Take a job's exit status pushed over NATS (only if ``takes_reports``).

        Returns:
            Whether a job was waiting for it. The default takes nothing.
        """
        del exit_file, exit_code
        return False

    def alive(self, keys: Sequence[str]) -> None:  # noqa: B027 - a no-op by default
        """The jobs of these attempt keys were said to be running (a worker's heartbeat,
        only if ``takes_reports``). The default ignores it."""

    def serving(self, queues: Sequence[str]) -> None:  # noqa: B027 - a no-op by default
        """A worker serving these queues is alive (its heartbeat; only if
        ``takes_reports``). The default ignores it."""

    def batches(self, step: StepInstance, *, limit: int, started: Callable[[str, str], None],
                ended: Callable[[str, int | None, str], None]) -> Batches | None:
        """A way to run many short jobs of one step (a sampled step's samples) in
        batches, the backend keeping at most ``limit`` running, or None (the default):
        each job is then submitted and waited for on its own.

        ``started(key, job_id)`` is called once a job runs; ``ended(key, exit_code,
        error)`` once it ended (``exit_code`` None: it never started, ``error`` says why,
        "" when it was cancelled before it started).
        """
        del step, limit, started, ended
        return None


class Batches(abc.ABC):
    """Many jobs of one step handed to the backend in batches (``Adapter.batches``):
    Merlin's workers pull batches of samples; the local helper queues them."""

    @abc.abstractmethod
    def submit(self, requests: Sequence[JobRequest]) -> None:
        """Hand these jobs over; their starts and ends come through the callbacks."""

    @abc.abstractmethod
    def cancel(self, keys: Sequence[str]) -> None:
        """Stop these jobs: one not yet started never starts, one running is stopped
        as ``Adapter.cancel`` stops a job; each still ends through the callback."""

    def kill_all_now(self) -> None:  # noqa: B027 - a no-op by default
        """Kill every job of the batches at once (a second Ctrl-C)."""


@contextmanager
def map_exceptions(mapping: Mapping[type[Exception], type[AdapterError]], step: str = "") -> Iterator[None]:
    """Translate foreign exceptions raised inside the block into adapter errors.

    Args:
        mapping: Foreign exception type -> adapter error type.
        step: The step concerned, recorded on the new exception.

    Raises:
        AdapterError: the mapped type, chained to the original with ``from``.
    """
    try:
        yield
    except Exception as exc:
        for src, dst in mapping.items():
            if isinstance(exc, src):
                raise dst(f"{type(exc).__name__}: {exc}", step) from exc
        raise
