"""Start and stop ``enginectl serve`` in tests, as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import ENGINECTL, enginectl, wait_for_path

__all__ = ["Engine"]


class Engine:
    """One ``enginectl serve --state-dir DIR`` process (restartable)."""

    def __init__(self, state: Path, *extra: str) -> None:
        self.state = state
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state.parent / "engine.log"

    def start(self) -> Engine:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "client.json").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*ENGINECTL, "serve", "--state-dir", str(self.state), *self.extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, "TROUPE_DEBUG": "1"},
            )
        wait_for_path(self.state / "client.json", timeout=30)  # written once it answers
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the graceful stop; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        pidfile = self.state / "nats" / "nats-server.pid"
        if pidfile.exists():  # a server orphaned by a SIGKILLed engine
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def ctl(self, *args: str, timeout: float = 120, cwd: Path | None = None):  # type: ignore[no-untyped-def]
        return enginectl(*args, "--state-dir", str(self.state), timeout=timeout, cwd=cwd)

    def status(self, study_id: str) -> dict:
        result = self.ctl("status", study_id, "--json")
        assert 0 == result.returncode, result.stderr
        return json.loads(result.stdout)
