"""The supervisor through the real CLI: throttles, walltime and restarts, retries, Merlin's
exit codes, cancel by glob and live throttle changes over the control subject. Assertions
are made against an independent ledger the steps write themselves."""

from __future__ import annotations

from pathlib import Path

import anyio
import nats
import pytest

from engine import subjects
from engine.messages import (
    BUS_DECODER,
    ENCODER,
    CancelSteps,
    ControlReply,
    SetThrottle,
    StepState,
    StepStateChanged,
    StudyStarted,
    new_event_id,
)
from engine.status import read_status
from tests.conftest import ENGINECTL, enginectl, alive
from tests.ledger import ledger_cmd, max_overlap, read_ledger


def spec(path: Path, steps: list[dict], *, extra: str = "") -> Path:
    lines = ["description: {name: sup, description: supervisor test}", "study:"]
    for s in steps:
        lines.append(f"  - name: {s['name']}")
        lines.append("    description: test step")
        lines.append("    run:")
        lines.append("      cmd: |")
        lines += [f"        {line}" for line in s["cmd"].splitlines()]
        for key, value in s.items():
            if key not in ("name", "cmd"):
                lines.append(f"      {key}: {value}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def states(study: Path) -> dict[str, str]:
    return {r["Step Name"]: r["State"] for r in read_status(study / "status.csv")}


def test_throttle_three_never_overlaps_more_than_three_and_reaches_three(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    steps = [{"name": f"s{i:02d}", "cmd": ledger_cmd(ledger, "sleep 0.2")} for i in range(60)]
    result = enginectl("run", str(spec(tmp_path / "t.yaml", steps)), "-o", str(tmp_path / "s"),
                       "--throttle", "3")
    assert 0 == result.returncode, result.stderr
    entries = [e for e in read_ledger(ledger) if e.end is not None]
    assert 60 == len(entries)
    assert 3 == max_overlap(entries)


def test_group_throttle_limits_only_its_members(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    steps = [{"name": f"sim{i}", "cmd": ledger_cmd(ledger, "sleep 0.2"), "group": "sims"}
             for i in range(6)]
    extra = "troupe:\n  groups: {sims: 1}\n"
    result = enginectl("run", str(spec(tmp_path / "g.yaml", steps, extra=extra)),
                       "-o", str(tmp_path / "s"), "--throttle", "0")
    assert 0 == result.returncode, result.stderr
    assert 1 == max_overlap([e for e in read_ledger(ledger) if e.end is not None])




async def test_walltime_times_out_restarts_rlimit_times_and_leaves_no_process(
    tmp_path: Path, nats_server: str
) -> None:
    ledger = tmp_path / "ledger"
    body = f'sleep 30 &\necho $! >> {tmp_path}/children\nsleep 30\n'
    path = spec(tmp_path / "w.yaml", [{"name": "slow", "cmd": ledger_cmd(ledger, body),
                                       "walltime": '"00:00:02"'}])
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe("troupe.v1.events.>")
    await nc.flush()
    result = await anyio.run_process(
        [*ENGINECTL, "run", str(path), "-o", str(tmp_path / "s"), "--nats-url", nats_server,
         "--rlimit", "2", "--kill-grace", "1"], check=False)
    assert 2 == result.returncode, result.stderr.decode()
    events = []
    while True:
        msg = BUS_DECODER.decode((await sub.next_msg(timeout=5)).data)
        if isinstance(msg, StepStateChanged):
            events.append(msg)
            if msg.final:
                break
    await nc.close()
    running = [e for e in events if e.state == StepState.RUNNING]
    timeouts = [e for e in events if e.state == StepState.TIMEDOUT]
    assert [1, 2, 3] == [e.attempt for e in running], "first run + rlimit=2 restarts"
    assert [False, False, True] == [e.final for e in timeouts]
    for run, out in zip(running, timeouts, strict=True):
        assert 2.0 <= out.time - run.time <= 4.0
    assert "TIMEDOUT" == states(tmp_path / "s")["slow"]
    starts = read_ledger(ledger)
    assert [1, 2, 3] == [e.attempt for e in starts if e.end is None]
    pids = {e.pid for e in starts} | {int(p) for p in (tmp_path / "children").read_text().split()}
    assert 6 == len(pids), "three scripts, each with one child"
    assert [] == [p for p in pids if alive(p)]


def test_failed_step_is_retried_with_attempts_until_it_succeeds(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    body = '[ "$TROUPE_ATTEMPT" -ge 3 ]'
    extra = "troupe:\n  retry: {initial_delay: 0.05, factor: 2, cap: 1, jitter: 0}\n"
    path = spec(tmp_path / "r.yaml", [{"name": "flaky", "cmd": ledger_cmd(ledger, body)}],
                extra=extra)
    result = enginectl("run", str(path), "-o", str(tmp_path / "s"), "--attempts", "4")
    assert 0 == result.returncode, result.stderr
    ends = [e for e in read_ledger(ledger) if e.end is not None]
    assert [(1, 1), (2, 1), (3, 0)] == [(e.attempt, e.exit) for e in ends]
    gaps = [b.start - a.end for a, b in zip(ends, ends[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps


MERLIN = "merlin:\n  resources: {workers: {}}\n"


def test_merlin_retry_code_reruns_cmd_up_to_max_retries(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    steps = [
        {"name": "eventually", "cmd": ledger_cmd(ledger, '[ "$TROUPE_ATTEMPT" -ge 3 ] || exit $(MERLIN_RETRY)'),
         "max_retries": 5, "retry_delay": 0},
        {"name": "never", "cmd": ledger_cmd(ledger, "exit $(MERLIN_RETRY)"),
         "max_retries": 2, "retry_delay": 0},
    ]
    result = enginectl("run", str(spec(tmp_path / "m.yaml", steps, extra=MERLIN)),
                       "-o", str(tmp_path / "s"))
    assert 2 == result.returncode, result.stderr
    assert {"eventually": "FINISHED", "never": "FAILED"} == states(tmp_path / "s")
    runs = {}
    for e in read_ledger(ledger):
        if e.end is not None:
            runs.setdefault(e.step, []).append(e.exit)
    assert [104, 104, 0] == runs["eventually"]
    assert [104, 104, 104] == runs["never"], "1 run + max_retries=2"


def test_merlin_restart_code_runs_the_restart_command(tmp_path: Path) -> None:
    steps = [{"name": "rs", "cmd": "exit $(MERLIN_RESTART)",
              "restart": '"echo restarted > restarted.txt"', "retry_delay": 0}]
    result = enginectl("run", str(spec(tmp_path / "m.yaml", steps, extra=MERLIN)),
                       "-o", str(tmp_path / "s"))
    assert 0 == result.returncode, result.stderr
    assert "restarted\n" == (tmp_path / "s" / "rs" / "restarted.txt").read_text()


def test_merlin_soft_fail_lets_descendants_run(tmp_path: Path) -> None:
    steps = [{"name": "soft", "cmd": "exit $(MERLIN_SOFT_FAIL)"},
             {"name": "after", "cmd": "echo ran > ran.txt", "depends": "[soft]"}]
    result = enginectl("run", str(spec(tmp_path / "m.yaml", steps, extra=MERLIN)),
                       "-o", str(tmp_path / "s"))
    assert 2 == result.returncode, result.stderr
    assert {"soft": "FAILED", "after": "FINISHED"} == states(tmp_path / "s")


@pytest.mark.parametrize("code", ["MERLIN_HARD_FAIL", "MERLIN_STOP_WORKERS"])
def test_merlin_hard_fail_stops_the_whole_study(code: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    steps = [
        {"name": "long", "cmd": ledger_cmd(ledger, f"sleep 30 & echo $! > {tmp_path}/child\nwait")},
        {"name": "boom", "cmd": f"while [ ! -s {tmp_path}/child ]; do sleep 0.02; done\nexit $({code})"},
        {"name": "later", "cmd": "echo never", "depends": "[boom]"},
    ]
    result = enginectl("run", str(spec(tmp_path / "m.yaml", steps, extra=MERLIN)),
                       "-o", str(tmp_path / "s"), "--throttle", "0", "--kill-grace", "1",
                       timeout=60)
    assert 2 == result.returncode, result.stderr
    assert {"long": "CANCELLED", "boom": "FAILED", "later": "CANCELLED"} == states(tmp_path / "s")
    assert not alive(int((tmp_path / "child").read_text()))


def test_merlin_shell_key_sets_the_shebang(tmp_path: Path) -> None:
    steps = [{"name": "py", "cmd": "import sys\nopen('v.txt', 'w').write(sys.version[:1])",
              "shell": "/usr/bin/env python3"}]
    result = enginectl("run", str(spec(tmp_path / "m.yaml", steps, extra=MERLIN)),
                       "-o", str(tmp_path / "s"))
    assert 0 == result.returncode, result.stderr
    assert "3" == (tmp_path / "s" / "py" / "v.txt").read_text()


def test_merlin_keys_make_a_merlin_spec_but_unknown_keys_are_still_rejected(tmp_path: Path) -> None:
    ok = spec(tmp_path / "m.yaml", [{"name": "a", "cmd": "true", "max_retries": 2}])
    assert 0 == enginectl("validate", str(ok)).returncode
    bad = spec(tmp_path / "b.yaml", [{"name": "a", "cmd": "true", "max_retries": 2, "bogus": 1}])
    result = enginectl("validate", str(bad))
    assert 1 == result.returncode
    assert "study[0].run.bogus: unknown key 'bogus'" in result.stderr


async def _control(nc, study_id: str, verb: str, msg) -> ControlReply:  # type: ignore[no-untyped-def]
    reply = await nc.request(subjects.control(study_id, verb), ENCODER.encode(msg), timeout=5)
    out = BUS_DECODER.decode(reply.data)
    assert isinstance(out, ControlReply)
    return out


async def test_cancelling_sim_glob_mid_run_cancels_them_and_descendants_only(
    tmp_path: Path, nats_server: str
) -> None:
    steps = [{"name": "sim", "cmd": "sleep 30\necho $(X)"},
             {"name": "post", "cmd": "echo post", "depends": "[sim]"},
             {"name": "other", "cmd": f"while [ ! -e {tmp_path}/go ]; do sleep 0.02; done"}]
    extra = "global.parameters:\n  X: {values: [1, 2, 3], label: X.%%}\n"
    path = spec(tmp_path / "c.yaml", steps, extra=extra)
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe("troupe.v1.events.>")
    await nc.flush()
    async with await anyio.open_process(
        [*ENGINECTL, "run", str(path), "-o", str(tmp_path / "s"), "--nats-url", nats_server,
         "--throttle", "0", "--kill-grace", "1"]) as proc:
        study_id, running = "", set()
        while len(running) < 3:
            msg = BUS_DECODER.decode((await sub.next_msg(timeout=30)).data)
            if isinstance(msg, StudyStarted):
                study_id = msg.study_id
            elif isinstance(msg, StepStateChanged) and msg.state == StepState.RUNNING:
                running.add(msg.step)
        reply = await _control(nc, study_id, "cancel",
                               CancelSteps(event_id=new_event_id(), study_id=study_id, glob="sim_*"))
        assert (True, 3) == (reply.ok, reply.matched)
        again = await _control(nc, study_id, "cancel",
                               CancelSteps(event_id=new_event_id(), study_id=study_id, glob="sim_*"))
        assert again.ok, "cancelling twice changes nothing and is not an error"
        (tmp_path / "go").touch()
        with anyio.fail_after(30):
            code = await proc.wait()
    await nc.close()
    assert 3 == code
    got = states(tmp_path / "s")
    assert {f"sim_X.{i}": "CANCELLED" for i in (1, 2, 3)} == {k: v for k, v in got.items() if k.startswith("sim")}
    assert {f"post_X.{i}": "CANCELLED" for i in (1, 2, 3)} == {k: v for k, v in got.items() if k.startswith("post")}
    assert "FINISHED" == got["other"]


async def test_throttle_is_raised_live_through_the_control_subject(
    tmp_path: Path, nats_server: str
) -> None:
    ledger = tmp_path / "ledger"
    body = f"while [ ! -e {tmp_path}/go ]; do sleep 0.02; done"
    steps = [{"name": f"w{i}", "cmd": ledger_cmd(ledger, body)} for i in range(4)]
    path = spec(tmp_path / "t.yaml", steps)
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe("troupe.v1.events.>")
    await nc.flush()
    async with await anyio.open_process(
        [*ENGINECTL, "run", str(path), "-o", str(tmp_path / "s"), "--nats-url", nats_server,
         "--throttle", "1"]) as proc:
        study_id, running = "", set()
        while not running:
            msg = BUS_DECODER.decode((await sub.next_msg(timeout=30)).data)
            if isinstance(msg, StudyStarted):
                study_id = msg.study_id
            elif isinstance(msg, StepStateChanged) and msg.state == StepState.RUNNING:
                running.add(msg.step)
        reply = await _control(nc, study_id, "throttle",
                               SetThrottle(event_id=new_event_id(), study_id=study_id, limit=4))
        assert reply.ok
        while len(running) < 4:  # only a raised throttle lets all four run at once
            msg = BUS_DECODER.decode((await sub.next_msg(timeout=30)).data)
            if isinstance(msg, StepStateChanged) and msg.state == StepState.RUNNING:
                running.add(msg.step)
        (tmp_path / "go").touch()
        with anyio.fail_after(30):
            assert 0 == await proc.wait()
    await nc.close()


