"""What the Slurm and Flux adapters share: running the scheduler's commands, waiting for a
job through a :class:`~adapters.jobwatch.JobWatcher`, cancelling it and confirming that it
ended, and handing the steps that ask for no resources to a local adapter (Maestro's rule).

A subclass names its backend (``name``), builds nothing but its own command lines, and
implements ``_query`` (the states of many jobs in one command) and ``_cancel_job`` (ask the
scheduler to stop one job).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from adapters.base import (
    Adapter,
    CancelError,
    JobHandle,
    JobRequest,
    JobResult,
    StatusError,
    map_exceptions,
)
from adapters.jobwatch import JobState, JobWatcher

__all__ = ["SchedulerAdapter", "text"]


def text(data: bytes | None) -> str:
    """A command's output as text (undecodable bytes replaced)."""
    return (data or b"").decode("utf-8", "replace")


class SchedulerAdapter(Adapter):
    """The common part of a batch scheduler's adapter (see the module docstring).

    Args:
        shell: The scripts' shebang (also the local adapter's).
        env: Extra environment variables for the scheduler's commands.
        local: The adapter for unscheduled steps (default: a ``LocalAdapter``).
        command_timeout: Seconds allowed for one query or cancel command.
        cancel_timeout: Seconds ``cancel`` waits for the scheduler to report the job ended.
        watch: ``JobWatcher`` settings (intervals, ``lost_after``, ...).
    """

    takes_reports = True  # the job script's trailer pushes the exit status
    _cancel_poll = 0.2  # seconds between checks that a cancelled job ended
    _command_env: Mapping[str, str] = {}  # added to every command's environment

    def __init__(
        self, *, shell: str, env: Mapping[str, str] | None, local: Adapter | None,
        command_timeout: float, cancel_timeout: float, watch: Mapping[str, Any],
    ) -> None:  # fmt: skip
        self.shell = shell
        self.env = dict(env or {})
        self.command_timeout = command_timeout
        self.cancel_timeout = cancel_timeout
        self._local = local
        self._log = structlog.get_logger(f"troupe.{self.name}")
        self._watcher = JobWatcher(self._query, backend=self.name, **watch)
        self._exit_files: dict[str, Path] = {}  # job id -> the trailer's exit file

    # --- the scheduler's part ---------------------------------------------------------

    async def _query(self, ids: Sequence[str]) -> dict[str, JobState]:
        raise NotImplementedError

    async def _cancel_job(self, handle: JobHandle) -> None:
        raise NotImplementedError

    async def _find(self, request: JobRequest) -> JobHandle | None:
        """The job of a scheduled step's attempt, by its key (None: no such job)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------

    def report(self, exit_file: str, exit_code: int) -> bool:
        """Take a job's pushed exit status (``engine.notify``) as if its file were read."""
        return self._watcher.report(exit_file, exit_code)

    @property
    def watcher(self) -> JobWatcher:
        """The shared completion watcher (its ``queries`` count is useful in tests)."""
        return self._watcher

    async def wait(self, handle: JobHandle) -> JobResult:
        """Wait for the job to end (the exit file its trailer writes, or the scheduler's
        records).

        Raises:
            StatusError: the scheduler could not be queried for ``lost_after`` s.
        """
        if handle.backend != self.name:
            return await self._local_adapter().wait(handle)
        result = await self._watcher.wait(handle.job_id, self._exit_files.get(handle.job_id))
        self._exit_files.pop(handle.job_id, None)  # kept if wait is cancelled: it may resume
        return result

    async def cancel(self, handle: JobHandle) -> None:
        """Cancel the job and wait until the scheduler reports it ended (shielded).
        A job that ended already: nothing happens.

        Raises:
            CancelError: the scheduler refused, or the job is still active
                ``cancel_timeout`` s later.
        """
        if handle.backend != self.name:
            await self._local_adapter().cancel(handle)
            return
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self.cancel_timeout):
                    await self._cancel_job(handle)
                    while True:
                        with map_exceptions({StatusError: CancelError}, handle.step):
                            state = (await self._query([handle.job_id])).get(handle.job_id)
                        if state is None or state.outcome is not None:
                            break
                        await anyio.sleep(self._cancel_poll)
            except TimeoutError as exc:
                raise CancelError(f"job {handle.job_id} still active {self.cancel_timeout:g} s "
                                  "after it was cancelled", handle.step) from exc
        self._log.info("job_cancelled", step=handle.step, job_id=handle.job_id)
        self._watcher.kick()

    def kill_all_now(self) -> None:
        """Kill the local steps at once (scheduler jobs are stopped by ``cancel``)."""
        if self._local is not None:
            self._local.kill_all_now()

    async def cleanup(self) -> None:
        """Stop what the local steps left running (scheduler jobs end with their job)."""
        if self._local is not None:
            await self._local.cleanup()

    async def lookup(self, request: JobRequest) -> JobHandle | JobResult | None:
        """Find an attempt after an engine restart: a scheduled step's job by its key in
        the scheduler's records, any other step through the local adapter.

        Raises:
            StatusError: the scheduler could not be queried.
        """
        if not request.step.is_scheduled:
            return await self._local_adapter().lookup(request)
        return await self._find(request)

    def _local_adapter(self) -> Adapter:
        if self._local is None:
            from adapters.local import LocalAdapter

            self._local = LocalAdapter(shell=self.shell, env=self.env)
        return self._local

    async def _checked(
        self, exe: str, args: list[str], error: type[StatusError] | type[CancelError],
        step: str = "", *, label: str = "", allow_fail: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run a query or cancel command, its failures as ``error`` (named ``label``)."""
        what = label or exe
        try:
            proc = await self._run(exe, args, timeout=self.command_timeout)
        except TimeoutError as exc:
            raise error(f"{what} did not answer within {self.command_timeout:g} s",
                        step) from exc  # fmt: skip
        except OSError as exc:
            raise error(f"cannot run {exe}: {exc}", step) from exc
        if proc.returncode != 0 and not allow_fail:
            detail = text(proc.stderr).strip() or f"exit status {proc.returncode}"
            raise error(f"{what} failed: {detail}", step)
        return proc

    async def _run(
        self, exe: str, args: list[str], *, timeout: float, cwd: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run ``exe`` (looked up on PATH now); TimeoutError/OSError propagate."""
        env = {**os.environ, **self.env, **self._command_env}
        path = shutil.which(exe, path=env.get("PATH"))
        if path is None:
            raise FileNotFoundError(f"{exe} not found on PATH")
        with anyio.fail_after(timeout):
            return await anyio.run_process([path, *args], check=False, env=env, cwd=cwd)
