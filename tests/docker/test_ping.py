"""``enginectl ping``, the images' health check: exit 0 while the engine answers, 1 when
it does not (a server without an engine, no server); ``--server`` checks the NATS server
only (a worker's health)."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import enginectl
from tests.docker.conftest import free_ports


def test_ping_exits_0_while_a_serve_engine_answers(engine: Any) -> None:
    pinged = engine.ctl("ping")
    assert 0 == pinged.returncode, pinged.stderr
    assert re.fullmatch(r"the engine answers \(nats://127\.0\.0\.1:\d+, \d+ ms\)\n",
                        pinged.stdout), pinged.stdout


def test_ping_exits_1_when_the_server_has_no_engine(nats_server: str) -> None:
    pinged = enginectl("ping", "--nats-url", nats_server, "--timeout", "1")
    assert 1 == pinged.returncode
    assert "nobody serves troupe.v1.api.status" in pinged.stderr, pinged.stderr
    served = enginectl("ping", "--server", "--nats-url", nats_server)
    assert 0 == served.returncode, served.stderr
    assert served.stdout.startswith("the NATS server answers (")


def test_ping_exits_1_without_a_server() -> None:
    pinged = enginectl("ping", "--server", "--nats-url", f"nats://127.0.0.1:{free_ports(1)[0]}")
    assert 1 == pinged.returncode
    assert pinged.stderr.startswith("error: cannot connect to NATS at "), pinged.stderr
