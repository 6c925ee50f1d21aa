"""Starting local processes from a small helper process, so the engine never waits for
an ``exec``.

``subprocess.Popen`` returns only once the child has ``exec``'d: for a step that is a
shell script this is most of a millisecond, during which the engine's event loop stands
still, and the files a step needs (its workspace, its scripts, its output files) cost as
much again. Under ``enginectl run``, the local adapter instead hands each sample's start
(``JobRequest.bulk``; ordinary steps are started directly, a hand-off costs less) to one
helper (``RUNNER``, a plain Python process started once per study, a few MB) as a JSON
line: the helper creates the workspace, writes the scripts, opens the output files and
starts the process in its own session, while the engine goes on; a thread in the helper
``wait``s for its children and reports each exit status. The engine reads ``S <id> <pid>``
once the process exists, ``E <id> <exit code>`` when it ended (negative: the killing
signal) and ``F <id> <reason>`` for a start that failed (a missing interpreter: the
step's submission fails, as with ``Popen``), through ``loop.add_reader``, without a task
per job. Maestro's ``<name>.<pid>.out`` is named once the pid is known.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping

import anyio

__all__ = ["PID", "Spawner", "Started"]

PID = "\x00pid\x00"
"""In an output path, replaced by the child's pid (Maestro's ``<name>.<pid>.out``)."""

RUNNER = r"""
import json, os, subprocess, sys, threading
lock = threading.Lock()
cond = threading.Condition(lock)
ids = {}
def say(text):
    os.write(1, text.encode())
def reap():
    while True:
        with cond:
            while not ids:
                cond.wait()
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            continue
        with lock:
            job = ids.pop(pid, None)
        if job is not None:
            say(f"E {job} {os.waitstatus_to_exitcode(status)}\n")
threading.Thread(target=reap, daemon=True).start()
env0 = dict(os.environ)
PID = "\x00pid\x00"
for line in sys.stdin:
    r = json.loads(line)
    env = {**env0, **r["env"]}
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if r["append"] else os.O_TRUNC)
    try:
        if r["scripts"]:
            os.makedirs(r["cwd"], exist_ok=True)
        for path, text in r["scripts"]:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
            os.write(fd, text.encode()); os.fchmod(fd, 0o755); os.close(fd)
        names = [r["out"], r["err"]]  # a name with PID: renamed once the pid is known
        opened = [n.replace(PID, f"starting{r['id']}") for n in names]
        out = os.open(opened[0], flags | os.O_CLOEXEC, 0o644)
        err = os.open(opened[1], flags | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        say(f"F {r['id']} {exc}".replace("\n", " ") + "\n")
        continue
    with lock:
        try:
            child = subprocess.Popen(r["argv"], cwd=r["cwd"], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, env=env, start_new_session=True)
            # The reaper thread owns its exit status: Popen must never reap it itself.
            child.returncode = 0
            pid = child.pid
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            say(f"F {r['id']} {exc}".replace("\n", " ") + "\n")
            continue
        finally:
            os.close(out); os.close(err)
        for name, now in zip(names, opened):
            if name != now:
                os.replace(now, name.replace(PID, str(pid)))
        ids[pid] = r["id"]
        cond.notify()
        say(f"S {r['id']} {pid}\n")  # (under the lock: always before its E line)
"""


class Started:
    """One process the spawner was asked to start: its pid, then its exit code."""

    __slots__ = ("code", "error", "exited", "pid", "started")

    def __init__(self) -> None:
        self.pid = 0
        self.error = ""
        self.code: int | None = None
        self.started = anyio.Event()
        self.exited = anyio.Event()


class Spawner:
    """The helper process and the starts in flight (see the module docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts: dict[int, Started] = {}
        self._next = 0
        self._buf = b""

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", RUNNER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=self._env, close_fds=True, bufsize=0)
            assert self._proc.stdout is not None
            os.set_blocking(self._proc.stdout.fileno(), False)
            asyncio.get_running_loop().add_reader(self._proc.stdout.fileno(), self._readable)
        return self._proc

    async def start(self, argv: list[str], *, cwd: str, out: str, err: str, append: bool,
                    env: Mapping[str, str],
                    scripts: list[tuple[str, str]] = ()) -> tuple[int, Started]:  # type: ignore[assignment]
        """Start ``argv`` in a new session; return its pid once it exists.

        Raises:
            OSError: the helper is gone.
        """
        proc = self._ensure()
        self._next += 1
        job_id, start = self._next, Started()
        self._starts[job_id] = start
        line = json.dumps({"id": job_id, "argv": argv, "cwd": cwd, "out": out, "err": err,
                           "append": append, "env": dict(env),
                           "scripts": list(scripts)}) + "\n"
        assert proc.stdin is not None
        try:
            proc.stdin.write(line.encode())
        except (BrokenPipeError, ValueError) as exc:
            self._starts.pop(job_id, None)
            raise OSError(f"the process starter is gone: {exc}") from exc
        await start.started.wait()
        if start.error:
            raise OSError(start.error)
        return start.pid, start

    async def wait(self, start: Started) -> int | None:
        """The exit code of a started process (negative: the signal that killed it)."""
        await start.exited.wait()
        return start.code

    def _readable(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            chunk = self._proc.stdout.read(65536)
        except BlockingIOError:
            return
        if not chunk:  # the helper died: nothing it started will be reported
            asyncio.get_running_loop().remove_reader(self._proc.stdout.fileno())
            for start in self._starts.values():
                start.started.set()
                start.exited.set()
            self._starts.clear()
            return
        lines = (self._buf + chunk).split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            kind, job, value = line.split(b" ", 2)
            start = self._starts.get(int(job))
            if start is None:
                continue
            if kind == b"F":  # it could not be started: why
                start.error = value.decode(errors="replace")
                start.started.set()
                start.exited.set()
                del self._starts[int(job)]
            elif kind == b"S":
                start.pid = int(value)
                start.started.set()
            else:
                start.code = int(value)
                start.exited.set()
                del self._starts[int(job)]

    def close(self) -> None:
        """Stop the helper (its children go on: they are the adapter's to stop)."""
        if self._proc is not None:
            assert self._proc.stdout is not None and self._proc.stdin is not None
            try:
                asyncio.get_running_loop().remove_reader(self._proc.stdout.fileno())
            except RuntimeError:
                pass
            self._proc.stdin.close()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
