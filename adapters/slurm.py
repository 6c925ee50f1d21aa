"""The Slurm adapter: Maestro's sbatch scripts, pushed completion, never two jobs per attempt.

``submit`` writes ``<safe name>.slurm.sh`` (Maestro's text plus the exit-status trailer)
and runs ``sbatch --parsable --comment=<key token> <description> -D <workspace> <script>``.
The command-line ``--comment`` overrides the script's ``#SBATCH --comment`` (Maestro's
description, kept after the token), so the attempt's idempotency key is readable with
``squeue -o %k`` while Slurm remembers the job, and with ``sacct -o Comment`` afterwards
when ``AccountingStoreFlags=job_comment`` is set (tests/slurm/slurm-up.sh sets it). The
job name stays Maestro's; ``--wckey`` was not used because it is dropped unless the site
sets ``TrackWCKey``.

Failures of ``sbatch`` are classified (:func:`~adapters.slurm_parse.classify_sbatch_error`):
transient ones are retried with exponential backoff, a site submit limit is backpressure
(``submit`` waits for jobs to end, then tries again), a rejection fails with Slurm's
message. Whenever the outcome of an ``sbatch`` is unknown (timeout, transient or
unrecognised error, unparsable output) the key is looked up with ``squeue`` before
anything is resubmitted; while that lookup itself fails nothing is resubmitted.

``wait`` is served by a shared :class:`~adapters.jobwatch.JobWatcher`: the trailer's
``<safe name>.<jobid>.exit`` file, and one batched ``squeue -j`` (plus ``sacct -j`` for
jobs squeue no longer shows or that ended badly) per ``reconcile_interval``. ``cancel``
runs ``scancel`` and waits until Slurm reports the job ended. Steps with neither nodes nor
procs run locally, as in Maestro, through a :class:`~adapters.local.LocalAdapter`. Every
command is looked up on ``PATH`` when it is run, so tests can put stubs first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from adapters.base import (
    CancelError, JobHandle, JobOutcome, JobRequest, StatusError, SubmitError,
    map_exceptions,
)  # fmt: skip
from adapters.jobwatch import JobState
from adapters.scheduler import SchedulerAdapter, text
from adapters.launcher import LauncherError
from adapters.slurm_parse import (
    SACCT_FIELDS, SQUEUE_FORMAT, SbatchFailure, SlurmJob, SlurmParseError,
    classify_sbatch_error, comment_with_key, parse_sacct, parse_sbatch, parse_squeue,
)  # fmt: skip
from adapters.slurm_script import (
    HeaderError, is_scheduled, job_name, script_name, slurm_exit_file, slurm_script,
)  # fmt: skip
from engine.spec.naming import contained_path

if TYPE_CHECKING:
    from adapters.base import Adapter
    from engine.spec.graph import StepInstance

__all__ = ["SlurmAdapter", "exit_file_path"]

_EXEC = 0o755


def exit_file_path(step: StepInstance, job_id: str) -> Path:
    """Where the trailer of ``step``'s job ``job_id`` writes its exit status."""
    return Path(contained_path(step.workspace, f"{step.name}.{job_id}.exit"))


class _Sbatch(NamedTuple):
    job_id: str | None
    failure: SbatchFailure | None
    message: str
    ambiguous: bool  # a job may exist although sbatch did not say so


class SlurmAdapter(SchedulerAdapter):
    """Runs scheduled steps as Slurm batch jobs (and the others locally).

    Args:
        batch: The study's ``batch`` block (queue, bank, reservation, qos, nodes, procs).
        shell: The scripts' shebang (``batch.shell``).
        env: Extra environment variables for ``sbatch`` (exported to the jobs).
        watch_interval: Seconds between exit-file checks.
        reconcile_interval: Seconds between batched ``squeue``/``sacct`` queries.
        command_timeout: Seconds allowed for ``squeue``, ``sacct`` and ``scancel``.
        submit_timeout: Seconds allowed for one ``sbatch``.
        retries: Transient ``sbatch`` failures retried before ``submit`` gives up.
        backoff: First retry delay in seconds; doubled each time up to ``max_backoff``.
        max_backoff: Longest retry delay.
        backpressure_interval: Longest wait before retrying after a submit limit (a job
            of ours ending retries sooner).
        backpressure_timeout: Give up (retryable ``SubmitError``) after this long under a
            submit limit; None waits as long as it takes.
        cancel_timeout: Seconds ``cancel`` waits for Slurm to report the job ended.
        lost_after: Seconds without any record of a job before it is LOST.
        confirm_grace: Seconds a non-zero exit file waits for Slurm's terminal state
            before it is reported as FAILED on its own (e.g. without accounting).
        local: The adapter for unscheduled steps (default: a ``LocalAdapter``).
    """

    name = "slurm"

    def __init__(
        self, batch: Mapping[str, Any] | None = None, *, shell: str = "/bin/bash",
        env: Mapping[str, str] | None = None, watch_interval: float = 0.1,
        reconcile_interval: float = 2.0, command_timeout: float = 30.0,
        submit_timeout: float = 60.0, retries: int = 6, backoff: float = 0.5,
        max_backoff: float = 30.0, backpressure_interval: float = 10.0,
        backpressure_timeout: float | None = None, cancel_timeout: float = 60.0,
        lost_after: float = 120.0, confirm_grace: float = 10.0, local: Adapter | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            shell=shell, env=env, local=local, command_timeout=command_timeout,
            cancel_timeout=cancel_timeout,
            watch={"watch_interval": watch_interval, "reconcile_interval": reconcile_interval,
                   "lost_after": lost_after, "confirm_grace": confirm_grace},
        )
        self.batch = dict(batch or {})
        self.submit_timeout = submit_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.backpressure_interval = backpressure_interval
        self.backpressure_timeout = backpressure_timeout
        self._sacct_ok = True  # False once sacct says accounting is disabled

    # --- scripts ------------------------------------------------------------------

    def write_script(self, step: StepInstance) -> Path:
        """Write Maestro's ``<safe name>.slurm.sh`` (and ``.restart.slurm.sh``), no trailer.

        Raises:
            LauncherError: a ``$(LAUNCHER)`` token asks for more than the step has.
            OSError: the workspace cannot be written.
        """
        return self._write(step, restart=False, trailer=False)

    def _write(self, step: StepInstance, *, restart: bool, trailer: bool) -> Path:
        ws = Path(step.workspace)
        ws.mkdir(parents=True, exist_ok=True)
        exit_file = slurm_exit_file(step.workspace, step) if trailer else None
        paths = {}
        for is_restart in (False, True) if step.restart else (False,):
            path = Path(contained_path(ws, script_name(step, restart=is_restart)))
            path.write_text(slurm_script(step, self.batch, shell=self.shell,
                                         restart=is_restart, exit_file=exit_file))  # fmt: skip
            path.chmod(_EXEC)
            paths[is_restart] = path
        return paths[restart and bool(step.restart)]

    # --- submit -------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> JobHandle:
        """Submit one attempt with ``sbatch`` (or run an unscheduled step locally).

        Raises:
            SubmitError: Slurm rejected the job (``retryable=False``, Slurm's message),
                transient failures outlasted the retries or the backpressure timeout
                (``retryable=True``), or the script could not be written.
        """
        step = request.step
        if not is_scheduled(step):
            return await self._local_adapter().submit(request)
        with map_exceptions({OSError: SubmitError, LauncherError: SubmitError,
                             HeaderError: SubmitError}, step.name):
            script = self._write(step, restart=request.restart, trailer=True)
        args = ["--parsable", f"--comment={comment_with_key(request.key, step.description)}"]
        if self.batch.get("reservation"):
            args += ["--reservation", str(self.batch["reservation"])]
        args += ["-D", step.workspace, str(script)]
        job_id = await self._submit_once(args, request)
        self._exit_files[job_id] = exit_file_path(step, job_id)
        self._log.info("job_submitted", step=step.name, attempt=request.attempt, job_id=job_id)
        return JobHandle(step=request.actor, attempt=request.attempt, job_id=job_id,
                         backend=self.name)  # fmt: skip

    async def _submit_once(self, args: list[str], request: JobRequest) -> str:
        """Run sbatch until one job exists for the request's key, or fail.

        Invariant: sbatch never runs while an earlier sbatch for this key may have
        created a job that has not been looked for.
        """
        step = request.step.name
        log = self._log.bind(step=step, attempt=request.attempt)
        unknown = False
        failures = 0
        delay = self.backoff
        limited_at: float | None = None
        last = ""
        while True:
            if unknown:
                try:
                    found = await self._lookup_key(request.key)
                except StatusError as exc:
                    log.warning("submit_reconcile_failed", error=str(exc))
                else:
                    if found is not None:
                        log.info("submit_reconciled", job_id=found.job_id, after=last)
                        return found.job_id
                    unknown = False
            if not unknown:
                result = await self._sbatch(args, cwd=request.step.workspace)
                if result.job_id is not None:
                    return result.job_id
                last, unknown = result.message, result.ambiguous
                if result.failure is SbatchFailure.PERMANENT:
                    raise SubmitError(result.message, step, retryable=False)
                if result.failure is SbatchFailure.BACKPRESSURE:
                    now = anyio.current_time()
                    limited_at = now if limited_at is None else limited_at
                    timeout = self.backpressure_timeout
                    if timeout is not None and now - limited_at > timeout:
                        raise SubmitError(f"{result.message} (for {timeout:g} s)", step,
                                          retryable=True)  # fmt: skip
                    log.info("submit_backpressure", message=result.message)
                    with anyio.move_on_after(self.backpressure_interval):
                        await self._watcher.wait_changed()
                    continue
                if result.failure is SbatchFailure.UNKNOWN:
                    found = await self._lookup_key_or_none(request.key, log)
                    if found is not None:
                        return found.job_id
                    raise SubmitError(result.message, step, retryable=False)
            failures += 1
            if failures > self.retries:
                verdict = await self._give_up(request, failures, last, unknown, log)
                if isinstance(verdict, SubmitError):
                    raise verdict
                return verdict
            log.warning("submit_retry", failures=failures, delay=delay, message=last)
            await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _give_up(self, request: JobRequest, failures: int, last: str, unknown: bool,
                       log: Any) -> SubmitError | str:  # fmt: skip
        """Once retries are exhausted: the job id if one turned up by key, else the error."""
        message = f"sbatch failed {failures} times; last: {last}"
        if not unknown:
            return SubmitError(message, request.step.name, retryable=True)
        try:
            found = await self._lookup_key(request.key)
        except StatusError as exc:
            log.warning("submit_reconcile_failed", error=str(exc))
            # A job may exist: the engine must not start another attempt blindly.
            return SubmitError(f"{message}; outcome unknown: {exc}", request.step.name,
                               retryable=False)  # fmt: skip
        if found is not None:
            return found.job_id
        return SubmitError(message, request.step.name, retryable=True)

    async def _lookup_key_or_none(self, key: str, log: Any) -> SlurmJob | None:
        try:
            return await self._lookup_key(key)
        except StatusError as exc:
            log.warning("submit_reconcile_failed", error=str(exc))
            return None

    async def _sbatch(self, args: list[str], *, cwd: str) -> _Sbatch:
        try:
            proc = await self._run("sbatch", args, timeout=self.submit_timeout, cwd=cwd)
        except TimeoutError:
            return _Sbatch(None, SbatchFailure.TRANSIENT,
                           f"sbatch did not answer within {self.submit_timeout:g} s", True)
        except OSError as exc:
            return _Sbatch(None, SbatchFailure.PERMANENT, f"cannot run sbatch: {exc}", False)
        out, err = text(proc.stdout), text(proc.stderr)
        if proc.returncode == 0:
            try:
                return _Sbatch(parse_sbatch(out), None, "", False)
            except SlurmParseError as exc:
                return _Sbatch(None, SbatchFailure.TRANSIENT, str(exc), True)
        message = err.strip() or out.strip() or f"sbatch exited with status {proc.returncode}"
        failure = classify_sbatch_error(message)
        ambiguous = failure in (SbatchFailure.TRANSIENT, SbatchFailure.UNKNOWN)
        return _Sbatch(None, failure, message, ambiguous)

    # --- finding jobs by key ------------------------------------------------------

    async def _find(self, request: JobRequest) -> JobHandle | None:
        """Find the job of an attempt submitted earlier (e.g. before an engine restart).

        Looks for the key in ``squeue --me -t all``, then in ``sacct`` (jobs of the
        step's name in the last 7 days) when accounting keeps comments.

        Returns:
            A handle that ``wait`` and ``cancel`` accept, or None if no job has the key
            (the attempt was never submitted, or Slurm has forgotten it).

        Raises:
            StatusError: squeue failed.
        """
        step = request.step
        if not is_scheduled(step):
            return None
        job = await self._lookup_key(request.key)
        if job is None and self._sacct_ok:
            rows = await self._sacct(["--name", job_name(step), "-S", "now-7days"])
            matches = [r for r in rows.values() if r.key == request.key]
            job = max(matches, key=lambda r: _id_order(r.job_id)) if matches else None
        if job is None:
            return None
        self._exit_files[job.job_id] = exit_file_path(step, job.job_id)
        self._log.info("job_adopted", step=step.name, attempt=request.attempt, job_id=job.job_id)
        return JobHandle(step=request.actor, attempt=request.attempt, job_id=job.job_id,
                         backend=self.name)  # fmt: skip

    async def _lookup_key(self, key: str) -> SlurmJob | None:
        rows = await self._squeue(["--me"])
        matches = [r for r in rows.values() if r.key == key]
        if len(matches) > 1:
            self._log.error("duplicate_jobs_for_key", key=key, jobs=[r.job_id for r in matches])
        return max(matches, key=lambda r: _id_order(r.job_id)) if matches else None

    # --- cancel --------------------------------------------------------------------

    async def _cancel_job(self, handle: JobHandle) -> None:
        await self._checked("scancel", [handle.job_id], CancelError, handle.step)

    # --- queries --------------------------------------------------------------------

    async def _query(self, ids: Sequence[str]) -> dict[str, JobState]:
        """One ``squeue`` for all ids; ``sacct`` for those it lacks or that ended badly."""
        rows = await self._squeue(["-j", ",".join(ids)])
        states = {i: JobState(outcome=r.outcome, exit_code=r.exit_code, detail=r.detail)
                  for i, r in rows.items() if i in ids}  # fmt: skip
        ask = [i for i in ids if i not in rows or rows[i].outcome not in (None, JobOutcome.COMPLETED)]
        if ask and self._sacct_ok:
            try:
                acct = await self._sacct(["-j", ",".join(ask)])
            except StatusError as exc:
                self._log.warning("sacct_failed", error=str(exc))
                acct = {}
            for i in ask:
                row = acct.get(i)
                if row is None:
                    continue
                if i in rows:  # squeue's state is fresher; sacct adds the exit code
                    states[i] = JobState(outcome=rows[i].outcome, exit_code=row.exit_code,
                                         detail=row.detail)  # fmt: skip
                else:
                    states[i] = JobState(outcome=row.outcome, exit_code=row.exit_code,
                                         detail=row.detail)  # fmt: skip
        return states

    async def _squeue(self, args: list[str]) -> dict[str, SlurmJob]:
        proc = await self._checked("squeue", ["-h", "-t", "all", "-o", SQUEUE_FORMAT, *args],
                                   StatusError, allow_fail=True)  # fmt: skip
        if proc.returncode != 0:
            err = text(proc.stderr)
            if "Invalid job id specified" in err:
                return {}  # every id asked for is gone from slurmctld's memory
            raise StatusError(f"squeue failed: {err.strip() or proc.returncode}")
        with map_exceptions({SlurmParseError: StatusError}):
            return parse_squeue(text(proc.stdout))

    async def _sacct(self, args: list[str]) -> dict[str, SlurmJob]:
        proc = await self._checked("sacct", ["-X", "-P", "-n", "-o", SACCT_FIELDS, *args],
                                   StatusError, allow_fail=True)  # fmt: skip
        if proc.returncode != 0:
            err = text(proc.stderr)
            if "accounting storage is disabled" in err:
                self._sacct_ok = False
                self._log.info("sacct_unavailable", detail=err.strip())
                return {}
            raise StatusError(f"sacct failed: {err.strip() or proc.returncode}")
        with map_exceptions({SlurmParseError: StatusError}):
            return parse_sacct(text(proc.stdout))

def _id_order(job_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in job_id.replace("_", ".").split(".") if p.isdigit())
