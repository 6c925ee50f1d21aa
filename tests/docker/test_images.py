"""docker/: the Dockerfile and the compose file pass their linters, and the image built by
docker/base.sh and docker/build.sh (no registry) runs Troupe as a non-root user, weighs
under 400 MB and holds no credentials."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.docker.conftest import DOCKER, UID, run

MAX_BYTES = 400_000_000


def test_the_dockerfile_passes_hadolint_and_every_ignore_says_why(hadolint: str) -> None:
    linted = run([hadolint, "--no-color", DOCKER / "Dockerfile"])
    assert (0, "") == (linted.returncode, linted.stdout.strip()), linted.stdout + linted.stderr
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = lines[i - 1] if i else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: why?"


def test_hadolint_fails_a_dockerfile_with_a_warning(hadolint: str, tmp_path: Path) -> None:
    """The lint test can fail: the same check on a Dockerfile with a known warning."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM troupe/base:bookworm\nRUN apt-get install -y python3\n")
    linted = run([hadolint, "--no-color", bad])
    assert 1 == linted.returncode
    assert "DL3008" in linted.stdout


def test_the_compose_file_passes_dclint_without_a_warning(dclint: str) -> None:
    linted = run([dclint, "--color=false", "--max-warnings", "0", DOCKER / "compose.yaml"])
    assert 0 == linted.returncode, linted.stdout + linted.stderr
    assert "problem" not in linted.stdout, linted.stdout


def test_dclint_fails_a_compose_file_with_an_unknown_key(dclint: str, tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  engine:\n    image: troupe/troupe:latest\n    imagee: x\n")
    assert 0 != run([dclint, "--color=false", bad]).returncode


def _inspect(image: str, env: dict[str, str]) -> dict:
    got = run(["docker", "image", "inspect", image], env=env)
    assert 0 == got.returncode, got.stderr
    return json.loads(got.stdout)[0]


def test_the_image_runs_troupe_as_a_non_root_user_under_tini(
        image: str, docker_env: dict[str, str]) -> None:
    config = _inspect(image, docker_env)["Config"]
    assert f"{UID}:{UID}" == config["User"]
    assert ["/usr/bin/tini", "--", "enginectl"] == config["Entrypoint"]
    assert ["CMD", "enginectl", "ping", "--timeout", "10"] == config["Healthcheck"]["Test"]
    who = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id", image],
              env=docker_env)
    assert f"uid={UID}(troupe) gid={UID}(troupe)" in who.stdout, who.stdout + who.stderr


def test_the_image_weighs_under_400_mb(image: str, docker_env: dict[str, str]) -> None:
    size = _inspect(image, docker_env)["Size"]
    assert size < MAX_BYTES, f"{size / 1e6:.0f} MB"


def test_the_image_runs_version_the_hello_example_and_worker_help(
        image: str, docker_env: dict[str, str]) -> None:
    docker_run = ["docker", "run", "--rm", "--network", "none", image]
    version = run([*docker_run, "--version"], env=docker_env)
    assert (0, "enginectl, version") == (version.returncode, version.stdout[:18]), version.stderr
    helped = run([*docker_run, "worker", "--help"], env=docker_env)
    assert 0 == helped.returncode, helped.stderr
    assert "Usage: enginectl worker" in helped.stdout
    # The example exactly as the README runs it, then what it wrote and as whom.
    script = ("enginectl run examples/hello/hello.yaml && "
              "f=$(echo studies/hello/*/hello_world/hello_world.txt) && "
              'cat "$f" && stat -c "owner %u" "$f"')
    hello = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                 script], env=docker_env, timeout=180)
    assert 0 == hello.returncode, hello.stdout + hello.stderr
    assert re.search(r"^hello: FINISHED in ", hello.stderr, re.MULTILINE), hello.stderr
    assert f"Hello, World!\nowner {UID}\n" == hello.stdout


def test_the_image_installs_the_wheel_and_holds_no_credentials(
        image: str, docker_env: dict[str, str]) -> None:
    script = ("python3 -c 'import engine; print(engine.__file__)'; "
              "find /credentials /var/lib/troupe /studies /data -mindepth 1 | sort; "
              "ls /opt/troupe/lib/python3*/site-packages | grep -c '^troupe-.*dist-info$'; "
              "nats-server --version")
    looked = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                  script], env=docker_env)
    assert 0 == looked.returncode, looked.stderr
    lines = looked.stdout.splitlines()
    assert re.fullmatch(r"/opt/troupe/lib/python3\.\d+/site-packages/engine/__init__\.py",
                        lines[0]), lines
    # The credential directories are empty: init writes into volumes mounted over them.
    assert ["/credentials/client", "/credentials/engine", "/credentials/monitor",
            "/credentials/nats", "/credentials/worker"] == lines[1:6], lines
    assert "1" == lines[6]
    assert lines[7].startswith("nats-server: v"), lines
