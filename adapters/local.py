"""The local adapter: each step's script runs as a process group on this machine.

The script ``<safe name>.sh`` (Maestro's format: ``#!<shell>``, a blank line, the command)
is written into the step's workspace and executed directly, so its shebang is honoured,
with cwd = workspace, in a new session (its own process group), and stdout/stderr going
to ``<name>.<pid>.out`` / ``<name>.<pid>.err`` in the workspace, as Maestro names them.
The environment is the engine's plus ``TROUPE_STUDY_ID``, ``TROUPE_STUDY_DIR``,
``TROUPE_STEP``, ``TROUPE_ATTEMPT`` and ``TROUPE_WORKSPACE``.
Completion is pushed: ``wait`` awaits the process. ``cancel`` sends SIGTERM to the whole
process group, then SIGKILL after ``kill_grace`` seconds, and always SIGKILLs the group
once its leader is gone so that no process of the step survives it.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from adapters.base import JobHandle, JobOutcome, JobRequest, JobResult, SubmitError, map_exceptions
from engine.spec.naming import make_safe_path

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = ["LocalAdapter", "output_stem", "script_path"]

_LAUNCHER = re.compile(r"\$\(LAUNCHER\)(\[[^\]\n]*\])?[ \t]*")
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_EXEC = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


def script_path(step: StepInstance, *, restart: bool = False) -> Path:
    """Where the step's script lives: ``<workspace>/<safe name>[.restart].sh``."""
    suffix = ".restart.sh" if restart else ".sh"
    return Path(step.workspace) / f"{make_safe_path(step.name)}{suffix}"


def output_stem(step: StepInstance) -> str:
    """The stem of the step's output files: its raw name (Maestro keeps spaces), with
    ``/`` replaced so that a parameter value cannot turn it into a path."""
    return step.name.replace("/", "_").replace("\x00", "_")


class LocalAdapter:
    """Runs steps as local process groups, any number at a time.

    Args:
        shell: The shebang for generated scripts (``batch.shell``; Maestro's default).
        kill_grace: Seconds between SIGTERM and SIGKILL on cancel.
        strip_launcher: Remove ``$(LAUNCHER)`` tokens (all forms) so a scheduler step's
            command runs directly here (``enginectl run --local``). Otherwise they stay
            literal, as in Maestro's local adapter.
        env: Extra environment variables for every step.
    """

    name = "local"

    def __init__(
        self, *, shell: str = "/bin/bash", kill_grace: float = 10.0,
        strip_launcher: bool = False, env: dict[str, str] | None = None,
    ) -> None:
        self.shell = shell
        self.strip_launcher = strip_launcher
        self.kill_grace = kill_grace
        self._env = {**os.environ, **(env or {})}
        # Invariant: a key is present exactly while its process may still be alive.
        self._procs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self._cancelled: set[tuple[str, int]] = set()
        self._exited: dict[tuple[str, int], anyio.Event] = {}

    def write_script(self, step: StepInstance) -> Path:
        """Write ``<safe name>.sh`` (and ``.restart.sh`` if the step has one)."""
        ws = Path(step.workspace)
        ws.mkdir(parents=True, exist_ok=True)
        path = script_path(step)
        shell = step.shell or self.shell  # Merlin's per-step shell wins
        cmd = _LAUNCHER.sub("", step.cmd) if self.strip_launcher else step.cmd
        path.write_text(f"#!{shell}\n\n{cmd}\n")
        path.chmod(_EXEC)
        if step.restart:
            rpath = script_path(step, restart=True)
            restart = _LAUNCHER.sub("", step.restart) if self.strip_launcher else step.restart
            rpath.write_text(f"#!{shell}\n\n{restart}\n")
            rpath.chmod(_EXEC)
        return path

    async def submit(self, request: JobRequest) -> JobHandle:
        """Write the script and start it; return once the process exists.

        Raises:
            SubmitError: the workspace or script could not be written, or exec failed
                (e.g. a bad shebang or a missing shell).
        """
        step, attempt = request.step, request.attempt
        with map_exceptions({OSError: SubmitError, subprocess.SubprocessError: SubmitError},
                            step.name):
            proc = self._spawn(step, attempt, restart=request.restart)
        self._procs[(step.name, attempt)] = proc
        self._exited[(step.name, attempt)] = anyio.Event()
        return JobHandle(step=step.name, attempt=attempt, job_id=str(proc.pid), backend=self.name)

    def _spawn(self, step: StepInstance, attempt: int, *, restart: bool) -> subprocess.Popen[bytes]:
        script = self.write_script(step)
        if restart and step.restart:
            script = script_path(step, restart=True)
        ws = Path(step.workspace)
        stem = output_stem(step)
        out_tmp = ws / f"{stem}.out.starting"
        err_tmp = ws / f"{stem}.err.starting"
        out = os.open(out_tmp, _OUT_FLAGS, 0o644)
        try:
            err = os.open(err_tmp, _OUT_FLAGS, 0o644)
            try:
                proc = subprocess.Popen(
                    [str(script)], cwd=ws, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    env={**self._env, "TROUPE_STEP": step.name, "TROUPE_ATTEMPT": str(attempt),
                         "TROUPE_WORKSPACE": str(ws)},
                    start_new_session=True, close_fds=True,
                )
            finally:
                os.close(err)
        finally:
            os.close(out)
        # The child holds the descriptors; renaming gives the files Maestro's names.
        os.replace(out_tmp, ws / f"{stem}.{proc.pid}.out")
        os.replace(err_tmp, ws / f"{stem}.{proc.pid}.err")
        return proc

    async def wait(self, handle: JobHandle) -> JobResult:
        """Wait for the process to exit (exit code negative: the killing signal)."""
        key = (handle.step, handle.attempt)
        proc = self._procs[key]
        try:
            code = await _wait_process(proc)
        finally:
            self._procs.pop(key, None)
            exited = self._exited.pop(key, None)
            if exited is not None:
                exited.set()
            if key in self._cancelled:
                # Whatever the cancelled step started in its group dies with it.
                self._cancelled.discard(key)
                _killpg(proc.pid, signal.SIGKILL)
        outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
        return JobResult(outcome=outcome, exit_code=code)

    async def cancel(self, handle: JobHandle) -> None:
        """SIGTERM the job's process group, SIGKILL it after ``kill_grace`` seconds."""
        key = (handle.step, handle.attempt)
        proc = self._procs.get(key)
        if proc is None:
            return  # already ended
        self._cancelled.add(key)
        _killpg(proc.pid, signal.SIGTERM)
        exited = self._exited.get(key)
        if exited is not None:
            with anyio.move_on_after(self.kill_grace):
                await exited.wait()  # set by wait() once it has reaped the process
        _killpg(proc.pid, signal.SIGKILL)

    def kill_all_now(self) -> None:
        """SIGKILL every live process group (a second Ctrl-C)."""
        for key, proc in list(self._procs.items()):
            self._cancelled.add(key)
            _killpg(proc.pid, signal.SIGKILL)

    def running(self) -> int:
        """How many processes this adapter may still have alive."""
        return len(self._procs)


async def _wait_process(proc: subprocess.Popen[bytes]) -> int:
    """Await a child's exit without a thread per child: poll a pidfd for readability."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    try:
        while (code := proc.poll()) is None:
            await anyio.wait_readable(pidfd)
        return code
    finally:
        anyio.notify_closing(pidfd)
        os.close(pidfd)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
