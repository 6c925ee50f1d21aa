"""A 3-node NATS cluster (tests/cluster/cluster-up.sh): ``serve`` keeps its stream and
buckets with 3 replicas, and a study survives the loss of a server that holds a copy.
Real nats-servers (routes, a JetStream meta leader), a real engine."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import nats

from tests.conftest import wait_for_path
from tests.engine_proc import Engine


async def _stream(url: str) -> tuple[int, str, list[str]]:
    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream().stream_info("TROUPE_EVENTS")
        cluster = info.cluster
        return (info.config.num_replicas or 1, cluster.leader or "",
                [r.name for r in cluster.replicas or []])
    finally:
        await nc.close()


async def test_a_study_survives_a_server_of_the_cluster_going_down(
        cluster: tuple[str, Path], tmp_path: Path) -> None:
    urls, where = cluster
    engine = Engine(tmp_path / "state", "--nats-url", urls, "--drain-timeout", "5").start()
    try:
        assert "(a cluster of 3, 3 replicas)" in engine.log.read_text()
        gate = tmp_path / "gate"
        spec = tmp_path / "wait.yaml"
        spec.write_text(
            "description: {name: waits, description: w}\nstudy:\n"
            f"  - {{name: w, description: w, run: {{cmd: 'touch {tmp_path}/on; "
            f"while [ ! -e {gate} ]; do sleep 0.02; done'}}}}\n"
            "  - {name: after, description: a, run: {cmd: 'echo after', depends: [w]}}\n")
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "s"))
        assert 0 == result.returncode, result.stderr
        study_id = result.stdout.strip()
        wait_for_path(tmp_path / "on")
        replicas, leader, followers = await _stream(urls)
        assert 3 == replicas and leader and 2 == len(followers)
        victim = followers[0]  # a server holding a copy of the events (not the leader)
        os.kill(int((where / victim / "pid").read_text()), signal.SIGKILL)
        gate.touch()
        assert 0 == engine.ctl("watch", study_id, timeout=120).returncode
        out = engine.ctl("events", study_id)
        assert 0 == out.returncode, out.stderr
        events = [json.loads(line) for line in
                  out.stdout.splitlines()]
        finals = [(e["step"], e["state"]) for e in events
                  if e["type"] == "step_state_changed" and e.get("final")]
        assert sorted(finals) == [("after", "FINISHED"), ("w", "FINISHED")]
    finally:
        engine.stop()


async def test_no_event_is_lost_when_the_stream_leader_goes_down(
        cluster: tuple[str, Path], tmp_path: Path) -> None:
    urls, where = cluster
    engine = Engine(tmp_path / "state", "--nats-url", urls, "--drain-timeout", "5").start()
    try:
        marks = tmp_path / "marks"
        marks.mkdir()
        steps = "".join(
            f"  - {{name: s{i}, description: d, run: {{cmd: 'touch {marks}/{i}; sleep 0.2'}}}}\n"
            for i in range(40))
        spec = tmp_path / "many.yaml"
        spec.write_text("description: {name: many, description: m}\nstudy:\n" + steps)
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "s"), "-t", "4")
        assert 0 == result.returncode, result.stderr
        study_id = result.stdout.strip()
        while len(list(marks.iterdir())) < 10:  # mid-study
            await anyio.sleep(0.02)
        _, leader, _ = await _stream(urls)
        os.kill(int((where / leader / "pid").read_text()), signal.SIGKILL)
        assert 0 == engine.ctl("watch", study_id, timeout=180).returncode
        out = engine.ctl("events", study_id)
        assert 0 == out.returncode, out.stderr
        finals = [e["step"] for e in map(json.loads, out.stdout.splitlines())
                  if e["type"] == "step_state_changed" and e.get("final")]
        assert sorted(finals) == sorted(f"s{i}" for i in range(40)), "one final event each"
    finally:
        engine.stop()
