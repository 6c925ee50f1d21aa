"""NATS over TLS: `run --nats-url tls://... --tls-ca CA` works; without the CA the
certificate is refused in one line."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.natsserver import find_server_binary
from tests.conftest import REPO, enginectl, wait_for_path

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    crt, key = tmp_path / "srv.crt", tmp_path / "srv.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [find_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"),
         "--tls", "--tlscert", str(crt), "--tlskey", str(key), "--ports_file_dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(tmp_path / f"nats-server_{proc.pid}.ports", timeout=10)
        yield f"tls://127.0.0.1:{port}", crt
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_run_over_tls_with_the_servers_ca(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    url, ca = tls_server
    result = enginectl("run", str(REPO / "examples/hello/hello.yaml"), "-o", str(tmp_path / "s"),
                       "--nats-url", url, "--tls-ca", str(ca))
    assert 0 == result.returncode, result.stderr


def test_tls_server_without_its_ca_is_refused_clearly(tls_server: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    url, _ = tls_server
    result = enginectl("run", str(REPO / "examples/hello/hello.yaml"), "-o", str(tmp_path / "s"),
                       "--nats-url", url, timeout=30)
    assert 1 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines()), result.stderr
    assert "certificate" in result.stderr.lower() and "Traceback" not in result.stderr
