"""No process of a study survives its step's timeout or cancel, or the study's end, however
it left the step's process group: ``setsid``, a double fork, ``nohup ... &``. Each step
records the pids of what it starts; the test checks ``/proc`` for every one of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import enginectl

ESCAPES = (
    # a new session
    "setsid sh -c 'echo $$ >> {pids}; exec sleep 1000' &\n"
    # a double fork: the child's parent exits at once, it is re-parented
    "sh -c 'sleep 1000 & echo $! >> {pids}' \n"
    # nohup in the background, in the step's group (the plain case)
    "nohup sleep 1000 > /dev/null 2>&1 & echo $! >> {pids}\n"
    # a new session that forks again
    "setsid sh -c 'sleep 1000 & echo $! >> {pids}; wait' &\n"
)


def alive(pid: int) -> bool:
    """The pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def wait_recorded(pids: Path, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [int(x) for x in pids.read_text().split()]
        except (OSError, ValueError):
            found = []
        if len(found) >= n:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"only {found} recorded in {pids}")
        time.sleep(0.02)


def gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids still alive once ``timeout`` passed (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def spec(tmp_path: Path, body: str, extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    cmd = "\n".join("        " + line for line in body.splitlines())
    path.write_text("description: {name: d, description: d}\n"
                    f"{extra}study:\n  - name: s\n    description: s\n    run:\n"
                    f"      cmd: |\n{cmd}\n")
    return path


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_timed_out_step_leaves_no_process_behind(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    body = ESCAPES.format(pids=pids) + "sleep 1000\n"
    path = spec(tmp_path, body, extra="troupe: {rlimit: 1}\n")
    text = path.read_text().replace("    run:\n", "    run:\n      walltime: '00:00:03'\n")
    path.write_text(text)
    result = enginectl("run", str(path), "-o", str(tmp_path / "study"), "--kill-grace", "1",
                       timeout=120)
    assert 2 == result.returncode, result.stderr  # TIMEDOUT (after its one restart)
    recorded = wait_recorded(pids, 8)  # four per attempt, two attempts
    assert [] == gone(recorded)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_what_a_finished_step_left_running_ends_with_its_study(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # the step ends only once all four have written their pid (else the study's end may kill
    # one before it writes, and the test would wait for a pid that never comes)
    settle = f"until [ $(wc -w < {pids}) -ge 4 ]; do sleep 0.01; done\n"
    result = enginectl("run", str(spec(tmp_path, ESCAPES.format(pids=pids) + settle)),
                       "-o", str(tmp_path / "study"), timeout=120)
    assert 0 == result.returncode, result.stderr
    recorded = wait_recorded(pids, 4)
    assert [] == gone(recorded)
