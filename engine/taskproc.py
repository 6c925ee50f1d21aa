"""A worker's task processes: started without a fork of the worker, watched without a
thread, and never left behind when the worker dies.

* ``start_task`` runs a task's script with ``posix_spawn`` (a ``vfork``: the worker's
  memory is not copied) in the task's workspace, in a session of its own, stdin from
  ``/dev/null``, its output in Maestro's ``<stem>.<pid>.out``/``.err`` (named once the
  pid is known) or Merlin's ``<stem>.out``/``.err`` (appended to);
* ``wait_task`` waits for its exit through a pidfd on the event loop;
* ``Guard`` is a small process started once per worker, holding a pipe from it: when the
  worker dies, however it dies, the pipe closes and the guard kills every process that
  carries the worker's mark in its environment (each task and its descendants), so an
  attempt the engine finds lost is never still running when it is run again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping

__all__ = ["MARK_VAR", "Guard", "start_task", "wait_task"]

MARK_VAR = "TROUPE_WORKER_MARK"
"""The environment variable that marks a worker's task processes (for its guard)."""

_GUARD = r"""
import os, signal, sys
mark = ("%s=" % sys.argv[1]).encode() + sys.argv[2].encode()
while os.read(0, 4096):
    pass
for _ in range(100):  # the worker is gone: kill what it started, until nothing is left
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if not found:
        break
"""


class Guard:
    """The guard process of one worker (see the module docstring)."""

    def __init__(self) -> None:
        self.mark = f"{os.getpid()}-{os.urandom(8).hex()}"
        read, self._write = os.pipe()
        os.set_inheritable(self._write, False)
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _GUARD, MARK_VAR, self.mark],
            stdin=read, stdout=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        os.close(read)

    def close(self) -> None:
        """The worker stops: the guard kills what still runs, then exits."""
        os.close(self._write)
        self._proc.wait()


def start_task(script: str, *, cwd: str, stem: str, append: bool,
               env: Mapping[str, str]) -> int:
    """Start ``script`` (see the module docstring); return its pid.

    Raises:
        OSError: the workspace, the output files or the script are not there.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    base = os.path.join(cwd, stem)
    names = (f"{base}.out", f"{base}.err") if append else (
        f"{base}.out.starting", f"{base}.err.starting")
    fds: list[int] = []
    try:
        fds += [os.open(name, flags, 0o644) for name in names]
        home = os.getcwd()
        os.chdir(cwd)  # (posix_spawn has no chdir before Python 3.13)
        try:
            pid = os.posix_spawn(script, [script], env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, _null(), 0), (os.POSIX_SPAWN_DUP2, fds[0], 1),
                (os.POSIX_SPAWN_DUP2, fds[1], 2)])
        finally:
            os.chdir(home)
    except OSError:
        for name in names if not append else ():
            _unlink(name)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    if not append:  # the child holds the descriptors: Maestro's names, with the pid
        os.replace(names[0], f"{base}.{pid}.out")
        os.replace(names[1], f"{base}.{pid}.err")
    return pid


async def wait_task(pid: int) -> int:
    """The exit code of a child of this process (negative: the signal that killed it)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    if fd >= 0:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    try:
        _, status = os.waitpid(pid, 0)  # noqa: ASYNC222 - it has exited: the pidfd said so
    except ChildProcessError:  # reaped by someone else: its status is lost
        return 255
    return os.waitstatus_to_exitcode(status)


_NULL: list[int] = []


def _null() -> int:
    """``/dev/null``, opened once (every task's stdin)."""
    if not _NULL:
        _NULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _NULL[0]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
