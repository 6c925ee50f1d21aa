"""A watchdog process that kills a study's processes when its engine dies.

Local steps run in their own sessions (so that a Ctrl-C in the terminal reaches the
engine, which cancels them cleanly), which also means nothing kills them if the engine
itself is killed with SIGKILL. ``PR_SET_PDEATHSIG`` would reach only a step's first
process, not what its script started, and would have to be set between fork and exec of
every step. Instead ``open_study_watchdog(study_id)`` starts one small process per engine
that blocks reading a pipe whose only writer is the engine. When the pipe reaches
end-of-file (the engine exited, however it exited) the watchdog SIGKILLs every process of
this user marked with the study (``TROUPE_STUDY_ID=<study>`` in its environment, which
every step's process and all its descendants inherit; ``adapters.descendants``), sweeping
again while it finds some, then exits. The engine tells it nothing while the study runs:
a step costs it no write and no wake-up. Steps see nothing of it: same parent, same
session, same environment.

Under ``enginectl run`` (which nothing resumes) it is used; under ``enginectl serve`` it
is not, since a restarted engine adopts the steps that outlived it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from adapters.descendants import STUDY_VAR

__all__ = ["open_study_watchdog"]

# A POSIX shell and GNU grep (one exec for the whole sweep): it starts in about a
# millisecond. It ignores the terminal's signals by living in its own session; only EOF
# ends its wait. ``grep -lzxF`` lists the environ files holding the mark as one
# NUL-separated entry; the sweep is repeated while it finds some (a process may fork as
# it is being killed).
_PROGRAM = """\
cat > /dev/null
i=0
while [ "$i" -lt 5 ]; do
    pids=$(grep -lzxF -e "$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
    [ -z "$pids" ] && break
    kill -9 $pids 2>/dev/null
    i=$((i + 1))
done
"""


@contextmanager
def open_study_watchdog(study_id: str) -> Iterator[int]:
    """Start the watchdog of ``study_id``; on exit, close its pipe (it then kills what
    the study left running) and reap it.

    Yields:
        The watchdog's pid.

    Raises:
        OSError: the pipe or the process could not be created.
    """
    read_fd, write_fd = os.pipe()  # both non-inheritable: no step holds the write end
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", _PROGRAM, "troupe-watchdog", f"{STUDY_VAR}={study_id}"],
            stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is for the engine, not for it
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    try:
        yield proc.pid
    finally:
        os.close(write_fd)
        proc.wait()
