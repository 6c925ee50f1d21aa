"""A watchdog process that kills the local steps' process groups when the engine dies.

Local steps run in their own sessions (so that a Ctrl-C in the terminal reaches the
engine, which cancels them cleanly), which also means nothing kills them if the engine
itself is killed with SIGKILL. ``PR_SET_PDEATHSIG`` would reach only a step's first
process, not what its script started, and would have to be set between fork and exec of
every step. Instead ``open_group_watchdog()`` starts one small process per engine that
reads a pipe whose only writer is the engine: ``+PGID`` when a step's group starts,
``-PGID`` once its leader has been reaped. When the pipe reaches end-of-file (the engine
exited, however it exited) the watchdog SIGKILLs every group still listed, then exits.
Steps see nothing of it: same parent, same session, same environment.

Under ``enginectl run`` (which nothing resumes) the local adapter reports to it; under
``enginectl serve`` it is not used, since a restarted engine adopts the steps that
outlived it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

__all__ = ["GroupWatchdog", "open_group_watchdog"]

# Self-contained (run with -I -S: no site, no project imports), so it starts in ~10 ms.
# It ignores the terminal's signals by living in its own session; only EOF ends it.
_PROGRAM = """\
import os, signal, sys
groups = set()
for line in sys.stdin.buffer:
    op, pgid = line[:1], int(line[1:])
    if op == b"+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupWatchdog:
    """The engine's end of the watchdog: report groups as they start and end.

    Invariant: a group is listed from just after its leader is spawned until just after
    its leader is reaped (a pgid cannot be reused before then, so the watchdog never
    kills a stranger's group).
    """

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self._proc = proc
        self._fd: int | None = write_fd

    @property
    def pid(self) -> int:
        """The watchdog process's pid."""
        return self._proc.pid

    def watch(self, pgid: int) -> None:
        """List the process group ``pgid``: it is killed if the engine dies."""
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """Unlist ``pgid`` (its leader has been reaped)."""
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Close the pipe and reap the watchdog; groups still listed are killed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._proc.wait()

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line.encode())  # a few bytes: atomic on a pipe
        except BrokenPipeError:
            # The watchdog was killed by someone: the steps still run, unprotected.
            structlog.get_logger("troupe.local").warning(
                "step_watchdog_lost", watchdog_pid=self._proc.pid)
            os.close(self._fd)
            self._fd = None


@contextmanager
def open_group_watchdog() -> Iterator[GroupWatchdog]:
    """Start the watchdog; on exit, close its pipe and reap it.

    Yields:
        The engine's end of it.

    Raises:
        OSError: the pipe or the process could not be created.
    """
    read_fd, write_fd = os.pipe()  # both non-inheritable: no step holds the write end
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _PROGRAM],
            stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is for the engine, not for it
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    watchdog = GroupWatchdog(proc, write_fd)
    try:
        yield watchdog
    finally:
        watchdog.close()
