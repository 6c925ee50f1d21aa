"""docker/compose.yaml, run for real on a private dockerd: init writes the credentials,
three NATS containers form a JetStream cluster, the engine serves on it and two workers
take the tasks of two queues. A study submitted from the host with the generated client
credentials finishes with steps on both workers, and one submitted next finishes although
the NATS container its engine is connected to is killed in the middle of it.

Every container is on the host's network; the nodes get free loopback ports (through
``TROUPE_NATS_NODES``), and the studies volume is a host directory mounted at the same
path, so that the host's ``enginectl submit -o`` names a directory the engine can write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.status import read_status
from tests.conftest import ENGINECTL
from tests.docker.conftest import DOCKER, UID, VERSION, free_ports, run, wait_until

PROJECT = "troupetest"
SERVICES = ("dashboard", "engine", "n1", "n2", "n3", "worker-cpu", "worker-gpu")


@dataclass
class Topology:
    compose: list[str]
    env: dict[str, str]
    urls: str
    monitors: dict[str, int]  # node name: its monitoring port
    studies: Path
    secrets: Path  # copies of the generated passwords, one file per role

    def ctl(self, *args: str, role: str = "client", timeout: float = 120):  # type: ignore[no-untyped-def]
        """``enginectl ARGS`` on the host, as ``role`` with its generated password."""
        return run([*ENGINECTL, *args, "--nats-url", self.urls, "--user", role,
                    "--password-file", self.secrets / role], timeout=timeout, cwd=self.studies)

    def volume(self, name: str) -> Path:
        """Where a volume of the project lies on the host."""
        got = run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", f"{PROJECT}_{name}"],
                  env=self.env)
        assert 0 == got.returncode, got.stderr
        return Path(got.stdout.strip())

    def container(self, service: str) -> str:
        got = run([*self.compose, "ps", "-q", service], env=self.env)
        assert got.stdout.strip(), f"no container for {service}: {got.stderr}"
        return got.stdout.split()[0]


@pytest.fixture(scope="module")
def topology(image: str, compose: list[str], docker_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("topology")
    studies, secrets = work / "studies", work / "secrets"
    studies.mkdir()
    secrets.mkdir(mode=0o700)
    os.chown(studies, UID, UID)
    ports = free_ports(10)
    names = ("n1", "n2", "n3")
    nodes = ",".join(f"{n}@127.0.0.1:{ports[3 * i]}:{ports[3 * i + 1]}:{ports[3 * i + 2]}"
                     for i, n in enumerate(names))
    urls = ",".join(f"nats://127.0.0.1:{ports[3 * i]}" for i in range(3))
    env = {**docker_env, "TROUPE_TAG": VERSION, "TROUPE_NATS_NODES": nodes,
           "TROUPE_NATS_URLS": urls, "TROUPE_STUDIES": str(studies),
           "TROUPE_STUDIES_DIR": str(studies), "TROUPE_DASHBOARD_PORT": str(ports[9])}
    cmd = [*compose, "-p", PROJECT, "-f", str(DOCKER / "compose.yaml")]
    topo = Topology(cmd, env, urls, {n: ports[3 * i + 2] for i, n in enumerate(names)},
                    studies, secrets)
    try:
        up = run([*cmd, "up", "-d"], env=env, timeout=600)
        assert 0 == up.returncode, up.stdout + up.stderr
        for role in ("client", "worker", "engine"):
            shutil.copy(topo.volume(f"{role}-credentials") / "password", secrets / role)
        wait_until("the engine answers the host's client",
                   lambda: topo.ctl("ping", timeout=60).returncode == 0, timeout=180, interval=1)
        yield topo
    finally:
        logs = run([*cmd, "logs", "--no-color"], env=env, timeout=120)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        run([*cmd, "down", "-v", "--timeout", "10"], env=env, timeout=300)


def _health(topo: Topology) -> dict[str, str]:
    return {s: run(["docker", "inspect", "-f", "{{.State.Health.Status}}", topo.container(s)],
                   env=topo.env).stdout.strip() for s in SERVICES}


def test_every_service_becomes_healthy(topology: Topology) -> None:
    seen: dict[str, str] = {}

    def healthy() -> bool:
        seen.update(_health(topology))
        return set(seen.values()) == {"healthy"}

    wait_until(f"every service healthy (last seen: {seen})", healthy, timeout=120, interval=1)


def test_each_container_holds_only_its_own_credentials(topology: Topology) -> None:
    def listing(service: str) -> dict[str, list[str]]:
        got = run(["docker", "exec", topology.container(service), "sh", "-c",
                   "for d in /credentials/*; do echo \"$d:\" $(ls -A $d); done"], env=topology.env)
        assert 0 == got.returncode, got.stderr
        return {line.split(":")[0].rsplit("/", 1)[1]: line.split(":", 1)[1].split()
                for line in got.stdout.splitlines()}

    nats_files = sorted(["secrets.json", "urls", *(f"{n}.{k}" for n in ("n1", "n2", "n3")
                                                  for k in ("conf", "monitor"))])
    empty = {"client": [], "engine": [], "monitor": [], "nats": [], "worker": []}
    assert {**empty, "engine": ["password"]} == listing("engine")
    assert {**empty, "worker": ["password", "worker.json"]} == listing("worker-cpu")
    assert {**empty, "monitor": ["monitor.json", "password"]} == {
        k: sorted(v) for k, v in listing("dashboard").items()}
    assert {**empty, "nats": nats_files} == {k: sorted(v) for k, v in listing("n2").items()}
    for role in ("client", "engine", "monitor", "nats", "worker"):
        volume = topology.volume(f"{role}-credentials")
        assert (0o700, UID) == (volume.stat().st_mode & 0o777, volume.stat().st_uid), role
        for path in volume.iterdir():
            mode = path.stat().st_mode & 0o777
            assert mode == (0o644 if path.suffix == ".monitor" or path.name == "urls"
                            else 0o600), (path, oct(mode))


def test_the_cluster_refuses_a_submit_with_the_worker_credentials(topology: Topology) -> None:
    spec = topology.studies / "refused.yaml"
    spec.write_text("description: {name: refused, description: never runs}\n"
                    "study:\n  - name: a\n    description: a\n    run: {cmd: 'true'}\n")
    refused = topology.ctl("submit", str(spec), role="worker")
    assert 1 == refused.returncode
    assert "refused" in refused.stderr, refused.stderr
    assert not (topology.studies / "refused").exists()


def _spec(path: Path, queues: dict[str, int], pause: float) -> None:
    steps = "".join(
        f"  - name: {queue}{i}\n    description: on {queue}\n    run:\n      queue: {queue}\n"
        f"      cmd: echo \"$TROUPE_WORKER\" > worker.txt; sleep {pause}\n"
        for queue, n in queues.items() for i in range(n))
    path.write_text(f"description: {{name: {path.stem}, description: on the workers}}\n"
                    f"troupe: {{executor: workers}}\nstudy:\n{steps}")


def _ran_on(study: Path) -> dict[str, str]:
    """The worker each step ran on, as the step itself wrote it."""
    return {p.parent.name: p.read_text().strip() for p in study.glob("*/worker.txt")}


def test_a_study_from_the_host_finishes_with_steps_on_both_workers(topology: Topology) -> None:
    spec, study = topology.studies / "both.yaml", topology.studies / "both"
    _spec(spec, {"cpu": 4, "gpu": 2}, 0.1)
    done = topology.ctl("submit", str(spec), "-o", str(study), "--wait", timeout=300)
    assert 0 == done.returncode, done.stdout + done.stderr
    assert ["FINISHED"] * 6 == [r["State"] for r in read_status(study / "status.csv")]
    ran = _ran_on(study)
    assert 6 == len(ran)
    cpu = {w for s, w in ran.items() if s.startswith("cpu")}
    gpu = {w for s, w in ran.items() if s.startswith("gpu")}
    assert 1 == len(cpu) == len(gpu) and cpu != gpu, ran
    assert next(iter(cpu)).startswith("cpu-") and next(iter(gpu)).startswith("gpu-"), ran
    # The compose file's client service sees the same study, with the credentials init gave it.
    listed = run([*topology.compose, "run", "--rm", "--no-deps", "client", "status", "both"],
                 env=topology.env, timeout=120)
    assert 0 == listed.returncode, listed.stderr
    assert "FINISHED" in listed.stdout


def test_scaled_cpu_workers_share_the_cpu_queue(topology: Topology) -> None:
    scaled = run([*topology.compose, "up", "-d", "--no-recreate", "--scale", "worker-cpu=2"],
                 env=topology.env, timeout=300)
    assert 0 == scaled.returncode, scaled.stdout + scaled.stderr
    ids = run([*topology.compose, "ps", "-q", "worker-cpu"], env=topology.env).stdout.split()
    assert 2 == len(ids), ids

    def ready() -> bool:
        logs = [run(["docker", "logs", i], env=topology.env).stdout for i in ids]
        return all("ready: queues cpu" in text for text in logs)

    wait_until("both cpu workers ready", ready, timeout=120, interval=0.5)
    spec, study = topology.studies / "scaled.yaml", topology.studies / "scaled"
    _spec(spec, {"cpu": 12}, 1.0)
    done = topology.ctl("submit", str(spec), "-o", str(study), "--wait", timeout=300)
    assert 0 == done.returncode, done.stdout + done.stderr
    ran = _ran_on(study)
    assert 12 == len(ran), ran
    assert 2 == len(set(ran.values())), f"4 tasks at once need both workers: {ran}"
    assert all(w.startswith("cpu-") for w in ran.values()), ran


def test_the_dashboard_shows_the_studies_with_its_token_only(topology: Topology) -> None:
    port = topology.env["TROUPE_DASHBOARD_PORT"]
    found: list[str] = []

    def token() -> bool:
        logs = run(["docker", "logs", topology.container("dashboard")], env=topology.env)
        found[:] = re.findall(r"troupe dashboard: (http://\S+\?token=(\w+))", logs.stderr)
        return bool(found)

    wait_until("the dashboard's address in its log", token, timeout=60, interval=0.5)
    url, secret = found[0]
    assert url.startswith(f"http://127.0.0.1:{port}/"), url
    studies = f"http://127.0.0.1:{port}/api/studies"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(studies, timeout=10)
    assert 401 == refused.value.code
    request = urllib.request.Request(studies, headers={"Cookie": f"troupe_token={secret}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        listed = json.load(resp)
    names = {s["name"] for s in listed["studies"]}
    assert "both" in names, listed


def _engine_node(topo: Topology) -> str:
    """The node the engine is connected to (its monitoring endpoint lists connections)."""
    for node, port in topo.monitors.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz", timeout=5) as resp:
            if any(c.get("name") == "troupe-engine" for c in json.load(resp)["connections"]):
                return node
    pytest.fail("no node has the engine's connection")


def test_a_study_finishes_when_the_engines_nats_container_is_killed(topology: Topology) -> None:
    spec, study = topology.studies / "outage.yaml", topology.studies / "outage"
    _spec(spec, {"cpu": 28, "gpu": 12}, 0.3)
    submitted = topology.ctl("submit", str(spec), "-o", str(study))
    assert 0 == submitted.returncode, submitted.stderr
    study_id = submitted.stdout.strip()
    wait_until("8 steps ran", lambda: len(_ran_on(study)) >= 8, timeout=120, interval=0.05)
    victim = _engine_node(topology)
    container = topology.container(victim)
    killed = run(["docker", "kill", container], env=topology.env)
    assert 0 == killed.returncode, killed.stderr
    assert len(_ran_on(study)) < 40, "the study ended before the fault"
    watched = topology.ctl("watch", study_id, timeout=300)
    assert 0 == watched.returncode, watched.stdout + watched.stderr
    assert ["FINISHED"] * 40 == [r["State"] for r in read_status(study / "status.csv")]
    events = topology.ctl("events", study_id)
    assert 0 == events.returncode, events.stderr
    finals = [e["step"] for e in map(json.loads, events.stdout.splitlines())
              if e["type"] == "step_state_changed" and e.get("final")]
    assert 40 == len(finals) == len(set(finals)), "one final event per step"
    state = run(["docker", "inspect", "-f", "{{.State.Running}}", container], env=topology.env)
    assert "false" == state.stdout.strip(), f"{victim} came back: the fault did not last"
