"""The local adapter: each step's script runs as a process group on this machine.

The script ``<safe name>.sh`` (Maestro's format: ``#!<shell>``, a blank line, the command)
is written into the step's workspace and executed directly, so its shebang is honoured,
with cwd = workspace, in a new session (its own process group), and stdout/stderr going
to ``<name>.<pid>.out`` / ``<name>.<pid>.err`` in the workspace, as Maestro names them.
The environment is the engine's plus ``TROUPE_STUDY_ID``, ``TROUPE_STUDY_DIR``,
``TROUPE_STEP``, ``TROUPE_ATTEMPT`` and ``TROUPE_WORKSPACE``.
Under ``enginectl serve`` (``adoptable``) every step is started by the study's *keeper*
(``adapters.spawner`` with ``keep``: one helper process in a session of its own, which
outlives the engine): it claims the attempt by creating ``.troupe.<attempt>.pid``
exclusively (``<pid> <keeper pid>``), starts the script directly (``posix_spawn``: one
process per step, the group leader, whose pid is the job id), and appends ``exit N`` to
the claim when it ended, before it tells the engine; after an engine restart, ``lookup``
uses the claim to re-attach to a step that is still running, or to learn how it ended.
Under ``enginectl run``, which nothing resumes, the script is executed directly by the
engine (one process per step); the samples of
a sampled step (``JobRequest.bulk``) are started by a helper process that also creates
their workspaces and writes their scripts, so the engine never waits for an ``exec``
(``adapters.spawner``). In a Merlin spec the outputs are
Merlin's ``<name>.out``/``.err`` (``<name>.restart.out`` for a restart), appended to by
every attempt. Completion is pushed: ``wait`` awaits the process (a pidfd, or the
helper's report). ``cancel`` sends SIGTERM to the whole
process group, then SIGKILL after ``kill_grace`` seconds, and always SIGKILLs the group
once its leader is gone so that no process of the step survives it, nor any descendant
that left the group (``adapters.descendants``). Under ``enginectl run`` a watchdog kills
the study's processes if the engine itself dies (``adapters.watchdog``).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from adapters.base import (
    DEFAULT_KILL_GRACE,
    Adapter,
    JobHandle,
    JobOutcome,
    JobRequest,
    JobResult,
    SubmitError,
    map_exceptions,
)
from adapters.batches import LocalBatches
from adapters.descendants import JOB_KEY_VAR, STUDY_VAR, kill_marked
from adapters.spawner import CLAIMED, PID, Spawner, Started
from engine.spec.naming import contained_path

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = ["LocalAdapter", "output_stem", "script_path"]

_LAUNCHER = re.compile(r"\$\(LAUNCHER\)(\[[^\]\n]*\])?[ \t]*")
_SCRIPT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_SUPERSEDED = "superseded\n"
_EXEC = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


def script_path(step: StepInstance, *, restart: bool = False) -> Path:
    """Where the step's script lives: ``<workspace>/<safe name>[.restart].sh``."""
    return Path(_script(step, restart))


def _script(step: StepInstance, restart: bool = False) -> str:
    return contained_path(step.workspace, f"{step.name}{'.restart.sh' if restart else '.sh'}")


def output_stem(step: StepInstance) -> str:
    """The stem of the step's output files: its raw name (Maestro keeps spaces), with
    ``/`` replaced so that a parameter value cannot turn it into a path."""
    return step.name.replace("/", "_").replace("\x00", "_")


class LocalAdapter(Adapter):
    """Runs steps as local process groups, any number at a time.

    Args:
        shell: The shebang for generated scripts (``batch.shell``; Maestro's default).
        kill_grace: Seconds between SIGTERM and SIGKILL on cancel.
        strip_launcher: Remove ``$(LAUNCHER)`` tokens (all forms) so a scheduler step's
            command runs directly here (``enginectl run --local``). Otherwise they stay
            literal, as in Maestro's local adapter.
        env: Extra environment variables for every step.
        adoptable: Start each script through the keeper, which claims the attempt and
            records its end, so that an engine that restarts can adopt the attempt or
            learn how it ended (``enginectl serve``). Without it (``enginectl run``, which
            nothing resumes) the engine starts the script itself.
        merlin: Merlin's output files: ``<name>.out``/``.err`` without the pid, appended
            to by every attempt (a Merlin spec).
    """

    name = "local"

    def __init__(
        self, *, shell: str = "/bin/bash", kill_grace: float = DEFAULT_KILL_GRACE,
        strip_launcher: bool = False, env: dict[str, str] | None = None,
        adoptable: bool = True, merlin: bool = False,
    ) -> None:
        self.shell = shell
        self.merlin = merlin
        self.adoptable = adoptable
        self.strip_launcher = strip_launcher
        self.kill_grace = kill_grace
        self._env = {**os.environ, **(env or {})}
        # Invariant: a key is present exactly while its process may still be alive.
        self._jobs: dict[tuple[str, int], _Job] = {}
        self._cancelled: set[tuple[str, int]] = set()
        self._prepared: dict[str, tuple[str, ...]] = {}  # step -> what prepare() wrote
        self._spawner: Spawner | None = None
        self._batches: list[LocalBatches] = []

    def prepare(self, step: StepInstance) -> None:
        """Write the step's workspace and scripts ahead of its submission (the engine
        does it for the next step of a chain while its parent runs), so that submitting
        it only starts the process. A later change of the command is written again."""
        self.write_script(step)
        self._prepared[step.name] = _script_key(step)

    def ensure_script(self, step: StepInstance) -> None:
        """Write the step's scripts, unless ``prepare`` already wrote these."""
        if self._prepared.pop(step.name, None) != _script_key(step):
            self.write_script(step)

    def write_script(self, step: StepInstance) -> Path:
        """Write ``<safe name>.sh`` (and ``.restart.sh`` if the step has one)."""
        ws = step.workspace
        try:
            os.mkdir(ws)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(ws, exist_ok=True)
        for path, text in self._scripts(step):
            _write_exec(Path(path), text)
        return script_path(step)

    def _scripts(self, step: StepInstance) -> list[tuple[str, str]]:
        """The step's scripts, ``(path, text)``: the command's, and the restart's."""
        shell = step.shell or self.shell  # Merlin's per-step shell wins
        cmd = _LAUNCHER.sub("", step.cmd) if self.strip_launcher else step.cmd
        out = [(_script(step), f"#!{shell}\n\n{cmd}\n")]
        if step.restart:
            restart = _LAUNCHER.sub("", step.restart) if self.strip_launcher else step.restart
            out.append((_script(step, True), f"#!{shell}\n\n{restart}\n"))
        return out

    async def submit(self, request: JobRequest) -> JobHandle:
        """Write the script and start it; return once the process exists.

        Raises:
            SubmitError: the workspace or script could not be written, or exec failed
                (e.g. a bad shebang or a missing shell).
        """
        step, attempt = request.step, request.attempt
        # ValueError: an argument or variable Popen refuses (an embedded NUL byte).
        with map_exceptions({OSError: SubmitError, subprocess.SubprocessError: SubmitError,
                             ValueError: SubmitError}, step.name):
            # (Tried in a worker thread: no measurable gain on two cores, so kept simple.)
            job = self._spawn(step, attempt, restart=request.restart, key=request.key,
                              bulk=request.bulk)
            if isinstance(job, _Start):  # run: through the spawner, which never waits
                job = await self._spawn_by_helper(step, job)
        self._jobs[(request.actor, attempt)] = job
        return JobHandle(step=request.actor, attempt=attempt, job_id=str(job.pid), backend=self.name)

    def _spawn(self, step: StepInstance, attempt: int, *, restart: bool, key: str,
               bulk: bool = False) -> _Job | _Start:
        scripts: list[tuple[str, str]] = []
        helper = bulk or self.adoptable
        if self._prepared.pop(step.name, None) == _script_key(step):
            script = script_path(step)
        elif helper:  # the spawner writes them, off the event loop
            scripts = self._scripts(step)
            script = Path(scripts[0][0])
        else:
            script = self.write_script(step)
        stem = output_stem(step)
        if restart and step.restart:
            script = script_path(step, restart=True)
            if self.merlin:  # Merlin: <name>.restart.out
                stem += ".restart"
        ws = step.workspace
        extra = {"TROUPE_STEP": step.name, "TROUPE_ATTEMPT": str(attempt),
                 "TROUPE_WORKSPACE": ws, JOB_KEY_VAR: key}
        exit_path = Path(ws) / f".troupe.{attempt}.exit"
        if helper:
            claim = f"{ws}/.troupe.{attempt}.pid" if self.adoptable else ""
            return _Start(script=str(script), env=extra, exit_path=exit_path, key=key,
                          stem=stem, scripts=scripts, claim=claim)
        return self._spawn_direct(step, str(script), {**self._env, **extra}, exit_path, key,
                                  stem)

    def _spawn_direct(self, step: StepInstance, script: str, env: dict[str, str],
                      exit_path: Path, key: str, stem: str) -> _Job:
        """Execute the script itself, its output in files renamed after its pid (or in
        Merlin's ``<name>.out``/``.err``)."""
        ws = step.workspace
        base = f"{ws}/{stem}"
        # Merlin's names need no rename: every attempt appends to <name>.out/.err.
        suffix, flags = ("", _APPEND_FLAGS) if self.merlin else (".starting", _SCRIPT_FLAGS)
        out = os.open(f"{base}.out{suffix}", flags, 0o644)
        try:
            err = os.open(f"{base}.err{suffix}", flags, 0o644)
            try:
                proc = subprocess.Popen(
                    [script], cwd=ws, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    env=env, start_new_session=True, close_fds=True,
                )
            finally:
                os.close(err)
        finally:
            os.close(out)
        if self.merlin:
            return _Job(pid=proc.pid, exit_path=exit_path, popen=proc, key=key)
        # The child holds the descriptors; renaming gives the files Maestro's names.
        os.replace(f"{base}.out.starting", f"{base}.{proc.pid}.out")
        os.replace(f"{base}.err.starting", f"{base}.{proc.pid}.err")
        return _Job(pid=proc.pid, exit_path=exit_path, popen=proc, key=key)

    async def _spawn_by_helper(self, step: StepInstance, req: _Start) -> _Job:
        """Start the script through the spawner (``adapters.spawner``)."""
        try:
            pid, start = await self._helper().start(**self._helper_args(step, req),
                                                    claim=req.claim)
        except OSError as exc:
            if str(exc) == CLAIMED:
                raise SubmitError(f"attempt already claimed ({req.claim} exists: a restarted "
                                  "engine fenced it off)", step.name) from None
            raise
        if not pid:
            raise SubmitError("the process starter is gone", step.name)
        return _Job(pid=pid, exit_path=req.exit_path, key=req.key, start=start,
                    claim=req.claim)

    def _helper(self) -> Spawner:
        if self._spawner is None:
            # Under serve, the keeper: in a session of its own, it outlives the engine,
            # and records how each attempt ended in the attempt's claim.
            self._spawner = Spawner(self._env, keep=self.adoptable)
        return self._spawner

    def _helper_args(self, step: StepInstance, req: _Start) -> dict[str, Any]:
        """The spawner's arguments for a start; Maestro's ``<name>.<pid>.out`` names
        are made once the pid is known."""
        base = f"{step.workspace}/{req.stem}"
        suffix = "" if self.merlin else f".{PID}"
        return {"argv": [req.script], "cwd": step.workspace, "out": f"{base}{suffix}.out",
                "err": f"{base}{suffix}.err", "append": self.merlin, "env": req.env,
                "scripts": req.scripts}

    def start_args(self, request: JobRequest) -> dict[str, Any]:
        """The spawner's arguments for one job of a batch."""
        start = self._spawn(request.step, request.attempt, restart=request.restart,
                            key=request.key, bulk=True)
        assert isinstance(start, _Start)
        return self._helper_args(request.step, start)

    def batches(self, step: StepInstance, *, limit: int, started: Callable[[str, str], None],
                ended: Callable[[str, int | None, str], None]) -> LocalBatches | None:
        """Under ``run``, a step's samples queue in the helper (``adapters.batches``);
        under ``serve`` (``adoptable``) each is submitted alone, claimed by the keeper."""
        if self.adoptable:
            return None
        batches = LocalBatches(self._helper(), self.start_args, group=step.name, limit=limit,
                               started=started, ended=ended, kill_grace=self.kill_grace)
        self._batches.append(batches)
        return batches

    async def lookup(self, request: JobRequest) -> JobHandle | JobResult | None:
        """Find an attempt of a step after an engine restart, through its claim in the
        workspace (``.troupe.<attempt>.pid``: ``<pid> <keeper pid>``, then ``exit N``
        once it ended; ``.troupe.<attempt>.exit`` from an older engine's wrapper).

        Returns:
            A ``JobResult`` if it ended while the engine was away, a ``JobHandle`` to
            ``wait`` on if its process is still alive, or None if it never started or
            died without a trace (lost); an attempt never claimed is fenced off (its
            claim is made for the engine), so it can never start later.
        """
        step, attempt = request.step, request.attempt
        ws = Path(step.workspace)
        exit_path = ws / f".troupe.{attempt}.exit"
        claim = ws / f".troupe.{attempt}.pid"
        done = _read_exit(exit_path)
        if done is not None:
            return done
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass  # claimed: it runs, or ran
        except OSError:
            return None  # the workspace is gone
        else:
            os.write(fd, _SUPERSEDED.encode())
            os.close(fd)
            return None  # never started, and now it never will
        got = await _settled_claim(claim)
        if got.code is not None:
            return _result(got.code)
        if got.pid is None:  # superseded, failed, or its keeper died before saying the pid
            await anyio.to_thread.run_sync(kill_marked, JOB_KEY_VAR, request.key)
            return _read_exit(exit_path)
        if _runs(got.pid, request.key):
            self._jobs[(request.actor, attempt)] = _Job(
                pid=got.pid, exit_path=exit_path, key=request.key, claim=str(claim),
                keeper=got.keeper)
            return JobHandle(step=request.actor, attempt=attempt, job_id=str(got.pid),
                             backend=self.name)
        code = await _recorded_exit(str(claim), exit_path, got.keeper)
        return None if code is None else _result(code)

    async def wait(self, handle: JobHandle) -> JobResult:
        """Wait for the process to exit (exit code negative: the killing signal)."""
        key = (handle.step, handle.attempt)
        job = self._jobs[key]
        # If this wait is itself cancelled (the engine stops), the job stays known, so
        # that cancel() can still stop it.
        if job.popen is not None:
            code: int | None = await _wait_child(job.popen)
        elif job.start is not None:
            assert self._spawner is not None
            code = await self._spawner.wait(job.start)
        else:  # adopted: its keeper (or an older engine's wrapper) records its exit
            await _wait_pid(job.pid)
            code = await _recorded_exit(job.claim, job.exit_path, job.keeper)
        self._jobs.pop(key, None)
        job.exited.set()
        if key in self._cancelled:
            # Whatever the cancelled step started dies with it, in its group or not.
            self._cancelled.discard(key)
            _killpg(job.pid, signal.SIGKILL)
            kill_marked(JOB_KEY_VAR, job.key)
        if code is None:
            if job.start is not None:  # its keeper died: nothing of it may run on
                _killpg(job.pid, signal.SIGKILL)
                kill_marked(JOB_KEY_VAR, job.key)
                return JobResult(outcome=JobOutcome.LOST, detail="its keeper process died")
            return JobResult(outcome=JobOutcome.LOST, detail="adopted process left no exit status")
        outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
        return JobResult(outcome=outcome, exit_code=code)

    async def cancel(self, handle: JobHandle) -> None:
        """SIGTERM the job's process group, SIGKILL it after ``kill_grace`` seconds."""
        key = (handle.step, handle.attempt)
        job = self._jobs.get(key)
        if job is None:
            return  # already ended
        self._cancelled.add(key)
        _killpg(job.pid, signal.SIGTERM)
        kill_marked(JOB_KEY_VAR, job.key, signal.SIGTERM)  # those that left the group
        with anyio.move_on_after(self.kill_grace):
            if job.popen is not None and job.exited.is_set() is False:
                # Nobody may be waiting any more (the engine is stopping): reap it here.
                await _wait_child(job.popen)
            else:
                await job.exited.wait()  # set by wait() once the process is gone
        _killpg(job.pid, signal.SIGKILL)
        kill_marked(JOB_KEY_VAR, job.key)
        self._jobs.pop(key, None)

    def kill_all_now(self) -> None:
        """SIGKILL every live process group (a second Ctrl-C)."""
        for key, job in list(self._jobs.items()):
            self._cancelled.add(key)
            _killpg(job.pid, signal.SIGKILL)
            kill_marked(JOB_KEY_VAR, job.key)
        for batches in self._batches:
            batches.kill_all_now()

    async def cleanup(self) -> None:
        """Kill whatever this study's steps left running (``STUDY_VAR`` marks them all),
        and stop the spawner."""
        if self._spawner is not None and not self._jobs and not any(
                b.jobs for b in self._batches):
            self._spawner.close()
            self._spawner = None
        study = self._env.get(STUDY_VAR)
        if study:
            await anyio.to_thread.run_sync(kill_marked, STUDY_VAR, study)

    def running(self) -> int:
        """How many processes this adapter may still have alive."""
        return len(self._jobs) + sum(len(b.jobs) for b in self._batches)


class _Job:
    """A local job: its process group leader and where its exit is recorded."""

    __slots__ = ("claim", "exit_path", "exited", "keeper", "key", "pid", "popen", "start")

    def __init__(self, *, pid: int, exit_path: Path, key: str,
                 popen: subprocess.Popen[bytes] | None = None,
                 start: Started | None = None, claim: str = "", keeper: int = 0) -> None:
        self.start = start  # started by the spawner (run) or the keeper (serve)
        self.claim = claim  # serve: the attempt's claim, where its keeper records its exit
        self.keeper = keeper  # adopted: the keeper process that is its parent
        self.pid = pid
        self.key = key  # the attempt's key, in TROUPE_JOB_KEY of all its processes
        self.exit_path = exit_path
        self.popen = popen  # None for a process adopted after an engine restart
        self.exited = anyio.Event()


class _Start:
    """What the spawner is to start (``run``): built by ``_spawn``, started by ``submit``."""

    __slots__ = ("claim", "env", "exit_path", "key", "script", "scripts", "stem")

    def __init__(self, *, script: str, env: dict[str, str], exit_path: Path, key: str,
                 stem: str, scripts: list[tuple[str, str]], claim: str = "") -> None:
        self.script, self.env, self.exit_path, self.key, self.stem = (
            script, env, exit_path, key, stem)
        self.scripts = scripts
        self.claim = claim


def _script_key(step: StepInstance) -> tuple[str, ...]:
    return (step.workspace, step.cmd, step.restart, step.shell)


def _write_exec(path: Path, text: str) -> None:
    """Write an executable script in four system calls (create, write, chmod, close)."""
    fd = os.open(path, _SCRIPT_FLAGS, 0o755)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, _EXEC)
    finally:
        os.close(fd)


def _runs(pid: int, key: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and is the attempt ``key``'s process (its
    environment names the key: the pid is not someone else's now)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{JOB_KEY_VAR}={key}".encode() in fh.read().split(b"\0")
    except (OSError, IndexError):
        return False


class _Claim:
    """What an attempt's claim says: its process and keeper, and its exit once ended."""

    __slots__ = ("code", "keeper", "pid")

    def __init__(self, text: str) -> None:
        self.pid: int | None = None
        self.keeper = 0
        self.code: int | None = None
        lines = text.splitlines()
        first = lines[0].split() if lines else []
        if first and first[0].isdigit():
            self.pid = int(first[0])
            self.keeper = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
        for line in lines[1:]:
            word = line.split()
            if len(word) == 2 and word[0] == "exit":
                try:
                    self.code = int(word[1])
                except ValueError:
                    pass


def _read_claim(path: str) -> _Claim:
    try:
        with open(path) as fh:
            return _Claim(fh.read())
    except OSError:
        return _Claim("")


async def _settled_claim(path: Path) -> _Claim:
    """The claim, once its keeper wrote the pid (it does so right after the start: an
    empty claim is re-read for up to a second)."""
    for _ in range(50):
        try:
            text = path.read_text()
        except OSError:
            return _Claim("")
        if text:
            return _Claim(text)
        await anyio.sleep(0.02)
    return _Claim("")


async def _recorded_exit(claim: str, exit_path: Path, keeper: int) -> int | None:
    """The exit status recorded for an attempt whose process ended: in its claim by its
    keeper (which may be a moment behind: waited for while the keeper lives, up to 10 s),
    or in the exit file of an older engine's wrapper. None: nothing recorded it."""
    for _ in range(500):
        got = _read_claim(claim) if claim else _Claim("")
        if got.code is not None:
            return got.code
        legacy = _read_exit(exit_path)
        if legacy is not None:
            return legacy.exit_code
        if not claim or not keeper or not _alive(keeper):
            break
        await anyio.sleep(0.02)
    got = _read_claim(claim) if claim else _Claim("")  # (its last word, as it exited)
    return got.code


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _result(code: int) -> JobResult:
    outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
    return JobResult(outcome=outcome, exit_code=code, detail="recorded in its claim")


def _read_exit(path: Path) -> JobResult | None:
    try:
        code = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    outcome = JobOutcome.COMPLETED if code == 0 else JobOutcome.FAILED
    return JobResult(outcome=outcome, exit_code=code, detail="recorded by the step's wrapper")


async def _wait_child(proc: subprocess.Popen[bytes]) -> int:
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


async def _wait_pid(pid: int) -> None:
    """Await the exit of a process that is not our child (adopted after a restart)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(pidfd)
    finally:
        anyio.notify_closing(pidfd)
        os.close(pidfd)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
