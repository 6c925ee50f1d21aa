"""Status replies come a page at a time, so that no reply outgrows a NATS message, and a
reply the server refuses never stops the engine: ``enginectl status`` joins the pages,
an over-large ``events`` reply becomes a one-line error, and the engine goes on."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.natsserver import find_server_binary
from engine.status import status_page
from tests.conftest import wait_for_path
from tests.docker.conftest import free_ports
from tests.engine_proc import Engine

N = 60


def test_a_page_is_bounded_and_clipped() -> None:
    assert range(0, 3) == status_page(10, 0, 3)
    assert range(8, 10) == status_page(10, 8, 5)
    assert range(10, 10) == status_page(10, 50, 5)
    assert range(0, 0) == status_page(10, 0, 0)
    assert range(0, 0) == status_page(10, -4, 0)


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    """A nats-server (JetStream) whose messages may carry 16 KB at most."""
    port = free_ports(1)[0]
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nmax_payload: 16KB\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    proc = subprocess.Popen([find_server_binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_status_pages_join_and_an_oversized_reply_does_not_stop_the_engine(
        small_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPE_STATUS_PAGE", "25")  # the engine's and the client's
    spec = tmp_path / "spec.yaml"
    spec.write_text("description: {name: pages, description: many steps}\nstudy:\n" + "".join(
        f"  - name: s{i:02d}\n    description: one of many\n    run: {{cmd: 'true'}}\n"
        for i in range(N)))
    engine = Engine(tmp_path / "state", "--nats-url", small_server).start()
    try:
        done = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--wait")
        assert 0 == done.returncode, done.stderr
        status = engine.ctl("status", "pages", "--json")
        assert 0 == status.returncode, status.stderr
        reply = json.loads(status.stdout)
        assert N == reply["total_steps"]
        assert sorted(f"s{i:02d}" for i in range(N)) == sorted(s["step"] for s in reply["steps"])
        # Every event of 60 steps is far over 16 KB: refused by the server, not fatal.
        events = engine.ctl("events", "pages")
        assert 1 == events.returncode
        assert "could not send its reply" in events.stderr and "Traceback" not in events.stderr
        assert engine.proc is not None and engine.proc.poll() is None, "the engine stopped"
        again = engine.ctl("status", "pages")
        assert 0 == again.returncode, again.stderr
    finally:
        engine.stop()
