"""A NATS outage mid-study: the server is killed (SIGKILL) and started again twice on the
same port and store. The engine reconnects and carries on; the study completes, and the
stream holds exactly one final event per step."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.natsserver import find_server_binary
from tests.conftest import ENGINECTL, wait_for_exit_recorded, wait_for_path
from tests.engine_proc import Engine


class Server:
    """A nats-server with JetStream on a fixed loopback port, restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for stale in self.root.glob("*.ports"):
            stale.unlink()
        self.proc = subprocess.Popen(
            [find_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.root / "js"), "--ports_file_dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_path(self.root / f"nats-server_{self.proc.pid}.ports", timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "nats"
    root.mkdir()
    srv = Server(root)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_study_survives_two_nats_server_restarts(tmp_path: Path, server: Server) -> None:
    steps = "\n".join(
        f"  - {{name: s{i}, description: d, run: {{cmd: 'sleep 0.3', depends: [{f's{i-1}' if i % 10 else ''}]}}}}"
        .replace("depends: []", "depends: []")
        for i in range(40)
    )
    spec = tmp_path / "chain.yaml"
    spec.write_text("description: {name: outage, description: survives NATS restarts}\nstudy:\n" + steps + "\n")
    eng = Engine(tmp_path / "state", "--nats-url", server.url, "--drain-timeout", "5").start()
    try:
        sub = eng.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--throttle", "0")
        assert 0 == sub.returncode, sub.stderr
        study_id = sub.stdout.strip()
        for _ in range(2):
            wait_for_exit_recorded(tmp_path / "study" / "s1")
            time.sleep(0.5)  # let the study move on, then take the bus away mid-flight
            server.kill()
            time.sleep(0.5)
            server.start()
        watched = eng.ctl("watch", study_id, timeout=180)
        assert 0 == watched.returncode, watched.stderr
        final: dict[str, int] = {}
        for line in eng.ctl("events", study_id).stdout.splitlines():
            event = json.loads(line)
            if event["type"] == "step_state_changed" and event["final"]:
                final[event["step"]] = final.get(event["step"], 0) + 1
        assert {f"s{i}": 1 for i in range(40)} == final
        attempts = {s["step"]: s["attempt"] for s in eng.status(study_id)["steps"]}
        assert {f"s{i}": 1 for i in range(40)} == attempts, "no step ran twice"
    finally:
        eng.stop()




def test_run_ends_with_one_line_when_the_server_is_gone_for_good(
    tmp_path: Path, server: Server
) -> None:
    steps = "\n".join(f"  - {{name: s{i}, description: d, run: {{cmd: 'sleep 0.5'}}}}"
                      for i in range(6))
    spec = tmp_path / "long.yaml"
    spec.write_text("description: {name: gone, description: the bus goes away}\nstudy:\n"
                    + steps + "\n")
    proc = subprocess.Popen(
        [*ENGINECTL, "run", str(spec), "-o", str(tmp_path / "study"), "--nats-url", server.url,
         "--throttle", "1", "--kill-grace", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_path(tmp_path / "study" / "s0", timeout=30)  # the study is under way
        server.kill()  # and never comes back
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert 1 == len(lines), err
    assert "NATS" in lines[0] and "Traceback" not in err
