"""``engine.taskproc``: a worker's task processes, real ones. Maestro's output names, the
exit code through the pidfd, and the guard: a worker that dies (``os._exit``, no clean
up) takes its tasks, and what they started in other sessions, with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.taskproc import MARK_VAR, Guard, start_task, wait_task
from tests.conftest import alive


def _script(ws: Path, body: str) -> str:
    ws.mkdir(parents=True, exist_ok=True)
    script = ws / "s.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("append", [False, True])
async def test_output_goes_to_maestros_or_merlins_files_and_the_code_comes_back(
        tmp_path: Path, append: bool) -> None:
    script = _script(tmp_path, "pwd; echo err >&2; exit 3")
    pid = start_task(script, cwd=str(tmp_path), stem="s", append=append, env=dict(os.environ))
    assert 3 == await wait_task(pid)
    out = tmp_path / ("s.out" if append else f"s.{pid}.out")
    assert f"{tmp_path}\n" == out.read_text()
    assert "err\n" == out.with_suffix(".err").read_text()
    assert os.getcwd() != str(tmp_path)  # the worker's own directory is unchanged


async def test_a_missing_script_is_an_error_and_leaves_no_output_file(tmp_path: Path) -> None:
    tmp_path.joinpath("ws").mkdir()
    with pytest.raises(OSError):
        start_task(str(tmp_path / "ws" / "nope.sh"), cwd=str(tmp_path / "ws"), stem="s",
                   append=False, env={})
    assert [] == list((tmp_path / "ws").iterdir())


WORKER = """
import os, sys
from engine.taskproc import MARK_VAR, Guard, start_task
guard = Guard()
pid = start_task(sys.argv[1], cwd=sys.argv[2], stem="s", append=False,
                 env={**os.environ, MARK_VAR: guard.mark})
print(pid, flush=True)
sys.stdin.readline()
os._exit(0)  # dies without closing anything
"""


def test_the_tasks_of_a_worker_that_dies_die_with_it(tmp_path: Path) -> None:
    escaped = tmp_path / "escaped.pid"
    # The task starts a process in a session of its own, out of its group.
    script = _script(tmp_path / "ws", f"setsid sh -c 'echo $$ > {escaped}; sleep 300' &\n"
                                      "sleep 300")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, script, str(tmp_path / "ws")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert worker.stdout is not None and worker.stdin is not None
    task = int(worker.stdout.readline())
    deadline = time.monotonic() + 10
    while not escaped.exists() or not escaped.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    other = int(escaped.read_text())
    assert alive(task) and alive(other)
    worker.stdin.write("die\n")
    worker.stdin.flush()
    assert 0 == worker.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(task) or alive(other):
        assert time.monotonic() < deadline, "a task outlived its worker"
        time.sleep(0.02)


def test_a_guard_closed_by_its_worker_kills_what_still_runs(tmp_path: Path) -> None:
    guard = Guard()
    script = _script(tmp_path, "sleep 300")
    pid = start_task(script, cwd=str(tmp_path), stem="s", append=False,
                     env={**os.environ, MARK_VAR: guard.mark})
    guard.close()
    os.waitpid(pid, 0)  # it was killed (and is reaped here)
