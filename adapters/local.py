"""The local adapter: each step's script runs as a process group on this machine.

The script ``<safe name>.sh`` (Maestro's format: ``#!<shell>``, a blank line, the command)
is written into the step's workspace and executed directly, so its shebang is honoured,
with cwd = workspace, in a new session (its own process group), and stdout/stderr going
to ``<name>.<pid>.out`` / ``<name>.<pid>.err`` in the workspace, as Maestro names them.
Completion is pushed: ``wait`` awaits the process. ``cancel`` sends SIGTERM to the whole
process group, then SIGKILL after ``kill_grace`` seconds, and always SIGKILLs the group
once its leader is gone so that no process of the step survives it.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from adapters.base import JobHandle, SubmitError, map_exceptions
from engine.spec.naming import make_safe_path

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = ["LocalAdapter", "output_stem", "script_path"]

_LAUNCHER = re.compile(r"\$\(LAUNCHER\)(\[[^\]\n]*\])?[ \t]*")
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
        self._procs: dict[tuple[str, int], anyio.abc.Process] = {}
        self._cancelled: set[tuple[str, int]] = set()

    def write_script(self, step: StepInstance) -> Path:
        """Write ``<safe name>.sh`` (and ``.restart.sh`` if the step has one)."""
        ws = Path(step.workspace)
        ws.mkdir(parents=True, exist_ok=True)
        path = script_path(step)
        cmd = _LAUNCHER.sub("", step.cmd) if self.strip_launcher else step.cmd
        path.write_text(f"#!{self.shell}\n\n{cmd}\n")
        path.chmod(_EXEC)
        if step.restart:
            rpath = script_path(step, restart=True)
            restart = _LAUNCHER.sub("", step.restart) if self.strip_launcher else step.restart
            rpath.write_text(f"#!{self.shell}\n\n{restart}\n")
            rpath.chmod(_EXEC)
        return path

    async def submit(self, step: StepInstance, attempt: int) -> JobHandle:
        """Write the script and start it; return once the process exists.

        Raises:
            SubmitError: the workspace or script could not be written, or exec failed
                (e.g. a bad shebang).
        """
        with map_exceptions({OSError: SubmitError}, step.name):
            script = self.write_script(step)
            ws = Path(step.workspace)
            stem = output_stem(step)
            out_tmp = ws / f"{stem}.out.starting"
            err_tmp = ws / f"{stem}.err.starting"
            with open(out_tmp, "wb") as out, open(err_tmp, "wb") as err:
                proc = await anyio.open_process(
                    [str(script)],
                    cwd=ws,
                    stdin=None,
                    stdout=out,
                    stderr=err,
                    env=self._env,
                    start_new_session=True,
                )
            pid = proc.pid
            # The open descriptors follow the rename: the files get Maestro's names.
            os.replace(out_tmp, ws / f"{stem}.{pid}.out")
            os.replace(err_tmp, ws / f"{stem}.{pid}.err")
        self._procs[(step.name, attempt)] = proc
        return JobHandle(step=step.name, attempt=attempt, job_id=str(pid), backend=self.name)

    async def wait(self, handle: JobHandle) -> int:
        """Wait for the process to exit; return its code (negative: the killing signal)."""
        key = (handle.step, handle.attempt)
        proc = self._procs[key]
        try:
            code = await proc.wait()
        finally:
            self._procs.pop(key, None)
            with anyio.CancelScope(shield=True):
                await proc.aclose()
            if key in self._cancelled:
                # Whatever the cancelled step started in its group dies with it.
                self._cancelled.discard(key)
                _killpg(proc.pid, signal.SIGKILL)
        return code

    async def cancel(self, handle: JobHandle) -> None:
        """SIGTERM the job's process group, SIGKILL it after ``kill_grace`` seconds."""
        key = (handle.step, handle.attempt)
        proc = self._procs.get(key)
        if proc is None:
            return  # already ended
        self._cancelled.add(key)
        _killpg(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(self.kill_grace):
            await proc.wait()
        _killpg(proc.pid, signal.SIGKILL)

    def kill_all_now(self) -> None:
        """SIGKILL every live process group (a second Ctrl-C)."""
        for key, proc in list(self._procs.items()):
            self._cancelled.add(key)
            _killpg(proc.pid, signal.SIGKILL)

    def running(self) -> int:
        """How many processes this adapter may still have alive."""
        return len(self._procs)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
