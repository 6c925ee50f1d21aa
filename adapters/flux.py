"""The Flux adapter: ``flux submit`` / ``flux jobs`` / ``flux cancel`` for scheduled steps.

``submit`` writes ``<safe name>.flux.sh`` (:func:`~adapters.flux_script.flux_script`, plus
the exit-status trailer) and runs ``flux submit --job-name=<key> ... <script>``, reading
the F58 job id it prints (``FLUX_F58_FORCE_ASCII=1`` is set, so ``f``; ``ƒ`` and decimal
are accepted too). The job name carries the attempt's idempotency key, so ``flux jobs -a
--name=<key>`` finds the job again after an engine restart, and a ``flux submit`` that
times out is looked up by key before anything else happens; the output files keep
Maestro's ``<name>.{{id}}.out``/``.err`` names. A step runs as one task holding
``procs × cores per task`` cores, so the script runs once and its ``flux run`` lines start
the parallel work (Maestro runs the script in a nested instance; ``nested: false`` gives
Maestro's one-task-per-proc form instead; multi-node nested steps are refused).

Completion comes from the trailer's exit file and one batched ``flux jobs --json ID...``
per reconcile interval (:class:`~adapters.jobwatch.JobWatcher`). ``cancel`` uses the flux
Python bindings when they import, else ``flux cancel``, and waits until the job is
INACTIVE. Steps with neither nodes nor procs run locally, as in Maestro.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from adapters.base import (
    CancelError, JobHandle, JobRequest, StatusError, SubmitError, map_exceptions,
)  # fmt: skip
from adapters.flux_script import (
    f58_encode, flux_script, parse_flux_jobs, parse_jobid, submit_options,
)  # fmt: skip
from adapters.jobwatch import JobState
from adapters.scheduler import SchedulerAdapter, text
from adapters.slurm_script import is_scheduled
from engine.spec.naming import contained_path

if TYPE_CHECKING:
    from adapters.base import Adapter
    from engine.spec.graph import StepInstance

__all__ = ["FluxAdapter"]

_EXEC = 0o755


class FluxAdapter(SchedulerAdapter):
    """Runs scheduled steps as Flux jobs (and the others locally).

    Args:
        batch: The study's ``batch`` block (queue, bank, flux_uri, args, launcher_args).
        shell: The scripts' shebang.
        env: Extra environment variables for the flux commands (inherited by the jobs).
        watch_interval: Seconds between exit-file checks.
        reconcile_interval: Seconds between batched ``flux jobs`` queries.
        command_timeout: Seconds allowed for one flux command.
        cancel_timeout: Seconds ``cancel`` waits for the job to become INACTIVE.
        lost_after: Seconds without any record of a job before it is LOST.
        use_bindings: Cancel through the flux Python bindings when they import.
        local: The adapter for unscheduled steps (default: a ``LocalAdapter``).
    """

    name = "flux"
    _cancel_poll = 0.1
    _command_env = {"FLUX_F58_FORCE_ASCII": "1"}  # job ids printed as ASCII F58

    def __init__(
        self, batch: Mapping[str, Any] | None = None, *, shell: str = "/bin/bash",
        env: Mapping[str, str] | None = None, watch_interval: float = 0.1,
        reconcile_interval: float = 2.0, command_timeout: float = 30.0,
        cancel_timeout: float = 30.0, lost_after: float = 120.0, use_bindings: bool = True,
        local: Adapter | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            shell=shell, env=env, local=local, command_timeout=command_timeout,
            cancel_timeout=cancel_timeout,
            watch={"watch_interval": watch_interval, "reconcile_interval": reconcile_interval,
                   "lost_after": lost_after},
        )
        self.batch = dict(batch or {})
        if self.batch.get("flux_uri"):
            self.env.setdefault("FLUX_URI", str(self.batch["flux_uri"]))
        self.use_bindings = use_bindings and importlib.util.find_spec("flux") is not None

    def write_script(self, step: StepInstance) -> Path:
        """Write ``<safe name>.flux.sh`` (and ``.restart.flux.sh``), without the trailer.

        Raises:
            LauncherError: a ``$(LAUNCHER)`` token asks for more than the step has.
            OSError: the workspace cannot be written.
        """
        return self._write(step, restart=False, exit_file=None)

    def _write(self, step: StepInstance, *, restart: bool, exit_file: Path | None) -> Path:
        ws = Path(step.workspace)
        ws.mkdir(parents=True, exist_ok=True)
        word = shlex.quote(str(exit_file)) if exit_file is not None else None
        paths = {}
        for is_restart in (False, True) if step.restart else (False,):
            path = Path(contained_path(
                ws, f"{step.name}{'.restart' if is_restart else ''}.flux.sh"))
            path.write_text(flux_script(step, self.batch, shell=self.shell, restart=is_restart,
                                        exit_file=word))  # fmt: skip
            path.chmod(_EXEC)
            paths[is_restart] = path
        return paths[restart and bool(step.restart)]

    async def submit(self, request: JobRequest) -> JobHandle:
        """Submit one attempt with ``flux submit`` (or run an unscheduled step locally).

        Raises:
            SubmitError: flux rejected the job (its message), the resources cannot be
                expressed with ``flux submit``, or the outcome stayed unknown.
        """
        step = request.step
        if not is_scheduled(step):
            return await self._local_adapter().submit(request)
        exit_file = _exit_file(step, request.key)
        with map_exceptions({OSError: SubmitError, ValueError: SubmitError}, step.name):
            script = self._write(step, restart=request.restart, exit_file=exit_file)
        args = [*submit_options(step, self.batch, key=request.key), str(script)]
        try:
            proc = await self._run("flux", ["submit", *args], timeout=self.command_timeout)
        except OSError as exc:
            raise SubmitError(f"cannot run flux: {exc}", step.name) from exc
        except TimeoutError as exc:
            # The job may exist: look for it by key before saying anything.
            with map_exceptions({StatusError: SubmitError}, step.name):
                found = await self._find_id(request.key)
            if found is None:
                raise SubmitError(f"flux submit did not answer within {self.command_timeout:g} s"
                                  " and no job has its key", step.name, retryable=True) from exc
            job = found
        else:
            if proc.returncode != 0:
                msg = text(proc.stderr).strip() or f"flux submit exited {proc.returncode}"
                raise SubmitError(msg, step.name, retryable=False)
            with map_exceptions({ValueError: SubmitError}, step.name):
                job = parse_jobid(text(proc.stdout).splitlines()[-1])
        job_id = f58_encode(job)
        self._exit_files[job_id] = exit_file
        self._log.info("job_submitted", step=step.name, attempt=request.attempt, job_id=job_id)
        return JobHandle(step=request.actor, attempt=request.attempt, job_id=job_id, backend=self.name)

    async def _find(self, request: JobRequest) -> JobHandle | None:
        """Find an earlier attempt's job by its key (the job name), for re-adoption.

        Raises:
            StatusError: ``flux jobs`` failed.
        """
        step = request.step
        if not is_scheduled(step):
            return None
        job = await self._find_id(request.key)
        if job is None:
            return None
        job_id = f58_encode(job)
        self._exit_files[job_id] = _exit_file(step, request.key)
        return JobHandle(step=request.actor, attempt=request.attempt, job_id=job_id, backend=self.name)

    async def _find_id(self, key: str) -> int | None:
        proc = await self._flux(["jobs", "-a", f"--name={key}", "--json"], StatusError)
        with map_exceptions({ValueError: StatusError, KeyError: StatusError}):
            data = json.loads(text(proc.stdout) or '{"jobs": []}')
            ids = [int(j["id"]) for j in data.get("jobs", []) if j.get("name") == key]
        return max(ids) if ids else None

    async def _cancel_job(self, handle: JobHandle) -> None:
        with map_exceptions({ValueError: CancelError}, handle.step):
            job = parse_jobid(handle.job_id)
        if self.use_bindings:
            await anyio.to_thread.run_sync(_cancel_with_bindings, job, self.env.get("FLUX_URI"))
            return
        proc = await self._flux(["cancel", str(job)], CancelError, handle.step, allow_fail=True)
        err = text(proc.stderr).strip()
        if proc.returncode != 0 and not err.endswith("job is inactive"):
            raise CancelError(f"flux cancel failed: {err or proc.returncode}", handle.step)

    async def _query(self, ids: Sequence[str]) -> dict[str, JobState]:
        by_int = {parse_jobid(i): i for i in ids}
        proc = await self._flux(["jobs", "--json", *map(str, by_int)], StatusError,
                                allow_fail=True)
        out = text(proc.stdout)
        if proc.returncode != 0 and not out.strip():
            if "unknown" in text(proc.stderr):
                return {}  # none of the ids exists (any more)
            raise StatusError(f"flux jobs failed: {text(proc.stderr).strip()}")
        with map_exceptions({ValueError: StatusError, KeyError: StatusError}):
            states = parse_flux_jobs(out)
        return {by_int[n]: s for n, s in states.items() if n in by_int}

    async def _flux(
        self, args: list[str], error: type[StatusError] | type[CancelError], step: str = "",
        *, allow_fail: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        return await self._checked("flux", args, error, step, label=f"flux {args[0]}",
                                   allow_fail=allow_fail)


def _exit_file(step: StepInstance, key: str) -> Path:
    token = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(contained_path(step.workspace, f"{step.name}.{token}.exit"))


def _cancel_with_bindings(job: int, uri: str | None) -> None:
    import flux  # type: ignore[import-not-found]
    import flux.job  # type: ignore[import-not-found]

    handle = flux.Flux(uri) if uri else flux.Flux()
    try:
        flux.job.cancel(handle, job)
    except OSError as exc:
        if "inactive" not in str(exc):
            raise CancelError(f"flux.job.cancel({job}): {exc}") from exc
