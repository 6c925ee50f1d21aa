"""Every process a local step started, wherever it went: found by a mark in its environment.

A step's processes are not all in its process group: ``setsid``, a double fork or
``nohup ... &`` take a process out of the group (and out of the parent chain, once its
parent exits), so ``killpg`` misses it. What every descendant keeps is the environment it
inherited: the local adapter gives each attempt ``TROUPE_JOB_KEY=<study>/<step>/<attempt>``
(and every step of a study ``TROUPE_STUDY_ID``), and ``kill_marked`` sends a signal to
every process of this user whose environment holds such a mark, read from
``/proc/<pid>/environ``. It sweeps again while it still finds some (a process may fork
while it is being killed), a bounded number of times.

Why not a child subreaper: orphans would then become the engine's children, and reaping
them (``waitpid(-1)``) would race with the engine's own waits for its steps.

Limits: a process that clears its environment (``env -i``) or one of another user escapes;
Linux only (elsewhere nothing is found and only the process groups are signalled).
"""

from __future__ import annotations

import os
import signal

__all__ = ["JOB_KEY_VAR", "STUDY_VAR", "kill_marked", "marked"]

JOB_KEY_VAR = "TROUPE_JOB_KEY"
"""Marks every process of one attempt of one step."""
STUDY_VAR = "TROUPE_STUDY_ID"
"""Marks every process of one study's steps."""

_SWEEPS = 5


def marked(var: str, value: str) -> list[int]:
    """The pids of this user's processes (this one excepted) whose environment holds
    ``var=value``."""
    mark = f"{var}={value}".encode()
    me, found = os.getpid(), []
    try:
        entries = os.scandir("/proc")
    except OSError:
        return []
    with entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    env = fh.read()
            except OSError:
                continue  # gone, or another user's
            if mark in env.split(b"\0"):
                found.append(int(entry.name))
    return found


def kill_marked(var: str, value: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process marked ``var=value`` (see the module docstring).

    Returns:
        How many processes were signalled.
    """
    total = 0
    for _ in range(_SWEEPS):
        pids = marked(var, value)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
                total += 1
            except (ProcessLookupError, PermissionError):
                pass
        if sig != signal.SIGKILL:
            break  # a polite signal is sent once; the sweeps are for the last word
    return total
