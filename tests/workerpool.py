"""``enginectl worker`` processes for tests, each with its own working directory and
environment (``WORKER_ID``), stopped at the end; and the death of a worker's host."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import ENGINECTL

__all__ = ["Workers"]


class Workers:
    """Worker processes, stopped at the end."""

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, queues: str, concurrency: int = 1, *,
              where: tuple[str, str] | None = None, heartbeat: float = 1) -> None:
        cwd = self.root / name
        cwd.mkdir(parents=True)
        log = open(cwd / "worker.log", "wb")  # noqa: SIM115 - closed with the process
        connect = list(where) if where else ["--nats-url", self.url]
        self.procs[name] = subprocess.Popen(
            [*ENGINECTL, "-v", "worker", *connect, "--queues", queues,
             "--concurrency", str(concurrency), "--name", name, "--heartbeat", str(heartbeat)],
            cwd=cwd, stdout=log, stderr=log, env={**os.environ, "WORKER_ID": name})
        deadline = time.monotonic() + 30
        while b"ready" not in (cwd / "worker.log").read_bytes():
            assert self.procs[name].poll() is None, (cwd / "worker.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def kill_host(self, name: str) -> None:
        """The host of worker ``name`` dies: SIGKILL to the worker, then to every process
        of its tasks (each in a session of its own, found by ``TROUPE_WORKER``)."""
        self.procs[name].kill()
        self.procs[name].wait()
        mark = f"TROUPE_WORKER={name}".encode()
        while True:
            found = [pid for pid in _pids() if mark in _environ(pid).split(b"\0")]
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
