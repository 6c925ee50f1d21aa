"""``enginectl run`` end to end: real processes, a real nats-server, the real CLI."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import anyio
import nats
import pytest

from engine.messages import BUS_DECODER, StepState, StepStateChanged, StudyEnded
from engine.status import HEADER, read_status
from tests.conftest import ENGINECTL, REPO, enginectl, alive

def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def states(study: Path) -> dict[str, str]:
    return {row["Step Name"]: row["State"] for row in read_status(study / "status.csv")}


def test_hello_example_runs_to_finished_on_the_embedded_default(tmp_path: Path) -> None:
    study = tmp_path / "study"
    result = enginectl("run", str(REPO / "examples/hello/hello.yaml"), "-o", str(study))
    assert 0 == result.returncode, result.stderr
    assert {"hello_world": "FINISHED"} == states(study)
    assert "Hello, World!\n" == (study / "hello_world" / "hello_world.txt").read_text()
    ws = study / "hello_world"
    assert (ws / "hello_world.sh").read_text().startswith("#!/bin/bash\n\n")
    pid = read_status(study / "status.csv")[0]["Job ID"]
    assert (ws / f"hello_world.{pid}.out").exists() and (ws / f"hello_world.{pid}.err").exists()
    assert (study / "hello.yaml").exists(), "a copy of the spec is kept"
    assert (study / "meta" / "nats" / "js").is_dir(), "the embedded JetStream store is in meta/"
    assert (study / "logs" / "hello.log").exists()
    text = (study / "status.csv").read_text()
    assert text.startswith(HEADER + "\n") and not text.endswith("\n")


SPEC_CHAIN = """
description: {{name: chain, description: a failing chain and an independent branch}}
study:
  - name: a
    description: first
    run: {{cmd: "echo a > a.txt"}}
  - name: b
    description: fails
    run: {{cmd: "exit {code}", depends: [a]}}
  - name: c
    description: after b
    run: {{cmd: "echo c", depends: [b]}}
  - name: d
    description: independent
    run: {{cmd: "echo d > d.txt"}}
"""


def test_failed_step_fails_its_descendants_and_the_study_exits_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "chain.yaml", SPEC_CHAIN.format(code=3))
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study))
    assert 2 == result.returncode, result.stderr
    assert {"a": "FINISHED", "b": "FAILED", "c": "FAILED", "d": "FINISHED"} == states(study)
    assert (study / "d" / "d.txt").exists()
    assert not list((study / "c").glob("*.out")) if (study / "c").exists() else True


def test_a_failed_study_says_what_failed_how_and_where_to_look(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "chain.yaml", SPEC_CHAIN.format(code=3).replace(
        'exit 3', 'echo first >&2; echo the real cause >&2; exit 3'))
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study))
    assert 2 == result.returncode, result.stderr
    lines = result.stderr.splitlines()
    job = next(r["Job ID"] for r in read_status(study / "status.csv") if r["Step Name"] == "b")
    err = study / "b" / f"b.{job}.err"
    assert "1 step(s) failed:" in lines
    assert "  b: FAILED (exit code 3, 1 attempt)" in lines
    assert f"    see {err}" in lines
    assert "  1 step(s) did not run because a dependency failed: c" in lines
    assert lines[-4:-1] == [f"last lines of {err}:", "  | first", "  | the real cause"]
    assert re.fullmatch(rf"chain: FAILURE in \d+\.\d s \({re.escape(str(study))}\)", lines[-1])


def test_status_of_a_run_study_directory_needs_no_engine(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "chain.yaml", SPEC_CHAIN.format(code=3))
    study = tmp_path / "s"
    assert 2 == enginectl("run", str(spec), "-o", str(study)).returncode
    result = enginectl("status", str(study), "--state-dir", str(tmp_path / "no-engine"))
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["STEP", "STATE", "JOB"]
    assert {("a", "FINISHED"), ("b", "FAILED"), ("c", "FAILED"), ("d", "FINISHED")} == {
        tuple(line.split()[:2]) for line in lines[1:]}
    assert result.stdout.endswith("\n")


def test_dry_run_writes_every_script_and_runs_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "chain.yaml", SPEC_CHAIN.format(code=0))
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study), "--dry")
    assert 0 == result.returncode, result.stderr
    assert {"a": "DRYRUN", "b": "DRYRUN", "c": "DRYRUN", "d": "DRYRUN"} == states(study)
    assert "#!/bin/bash\n\necho a > a.txt\n" == (study / "a" / "a.sh").read_text()
    assert not (study / "a" / "a.txt").exists()


def _ledger_spec(n: int, cmd: str) -> str:
    steps = "\n".join(
        f"  - name: s{i}\n    description: ledger step\n    run:\n      cmd: |\n"
        + "".join(f"        {line}\n" for line in cmd.format(i=i).splitlines())
        for i in range(n)
    )
    return f"description: {{name: ledger, description: ledger}}\nstudy:\n{steps}\n"


def test_throttle_bounds_how_many_steps_run_at_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    cmd = f'echo "start {{i}}" >> {ledger}\nsleep 0.2\necho "end {{i}}" >> {ledger}'
    spec = write_spec(tmp_path / "t.yaml", _ledger_spec(6, cmd))
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"), "--throttle", "2")
    assert 0 == result.returncode, result.stderr
    running = peak = 0
    for line in ledger.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert 2 == peak


def test_unthrottled_steps_run_in_parallel(tmp_path: Path) -> None:
    """Each step waits until all four have started: only a parallel run can finish."""
    ledger = tmp_path / "ledger"
    cmd = (
        f'echo "start {{i}}" >> {ledger}\n'
        f'for t in $(seq 200); do [ "$(wc -l < {ledger})" -ge 4 ] && exit 0; sleep 0.05; done\n'
        "exit 1"
    )
    spec = write_spec(tmp_path / "p.yaml", _ledger_spec(4, cmd))
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"), "--throttle", "0")
    assert 0 == result.returncode, result.stderr


async def test_external_subscriber_sees_every_event_of_a_study_in_order(
    tmp_path: Path, nats_server: str
) -> None:
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe("troupe.v1.events.>")
    await nc.flush()
    study = tmp_path / "s"
    result = await anyio.run_process(
        [*ENGINECTL, "run", str(REPO / "examples/sweep/sweep.yaml"), "-o", str(study),
         "--nats-url", nats_server], check=False,
    )
    assert 0 == result.returncode, result.stderr.decode()
    seen: dict[str, list[StepState]] = {}
    ended = None
    with anyio.fail_after(10):
        while ended is None:
            msg = BUS_DECODER.decode((await sub.next_msg(timeout=10)).data)
            if isinstance(msg, StepStateChanged):
                chain = seen.setdefault(msg.step, [StepState.INITIALIZED])
                assert chain[-1] == msg.previous, f"{msg.step}: events out of order"
                chain.append(msg.state)
            elif isinstance(msg, StudyEnded):
                ended = msg
    expected = [StepState.INITIALIZED, StepState.WAITING, StepState.PENDING, StepState.RUNNING,
                StepState.FINISHED]
    assert 5 == len(seen)
    assert all(expected == chain for chain in seen.values()), seen
    assert "FINISHED" == ended.state
    # The same events were stored in JetStream for late monitors.
    js = nc.jetstream()
    info = await js.stream_info("TROUPE_EVENTS")
    assert 5 * 4 + 2 == info.state.messages
    await nc.close()


SPEC_SLEEP = """
description: {{name: sleepy, description: a step that outlives its patience}}
study:
  - name: long
    description: sleeps with a child
    run:
      cmd: |
        sleep 300 &
        echo $! > {tmp}/child.pid
        echo $$ > {tmp}/self.pid
        wait
  - name: after
    description: never runs
    run: {{cmd: "echo never", depends: [long]}}
"""




@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_during_run_cancels_cleanly_with_no_survivors(
    tmp_path: Path, nats_server: str, signum: int
) -> None:
    spec = write_spec(tmp_path / "sleep.yaml", SPEC_SLEEP.format(tmp=tmp_path))
    study = tmp_path / "s"
    nc = await nats.connect(nats_server)
    sub = await nc.subscribe("troupe.v1.events.*.step.long.running")
    await nc.flush()
    async with await anyio.open_process(
        [*ENGINECTL, "run", str(spec), "-o", str(study), "--nats-url", nats_server,
         "--kill-grace", "5"],
    ) as proc:
        await sub.next_msg(timeout=30)  # the step is RUNNING
        pids = (tmp_path / "child.pid", tmp_path / "self.pid")
        while not all(p.exists() and p.read_text().strip() for p in pids):
            await anyio.sleep(0.01)  # the script has written both pids (self.pid last)
        proc.send_signal(signum)
        with anyio.fail_after(30):
            code = await proc.wait()
    await nc.close()
    assert 3 == code
    assert {"long": "CANCELLED", "after": "CANCELLED"} == states(study)
    for name in ("child.pid", "self.pid"):
        pid = int((tmp_path / name).read_text())
        assert not alive(pid), f"{name} {pid} survived"


def test_unknown_step_reference_is_one_line_exit_1_no_traceback(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "bad.yaml", SPEC_CHAIN.format(code=0).replace("[b]", "[bye]"))
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"))
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith(f"error: {spec}: study[2].run.depends")
    assert "bye" in lines[0]
    assert not (tmp_path / "s").exists(), "nothing is created for a bad spec"


def test_existing_output_directory_is_never_overwritten(tmp_path: Path) -> None:
    study = tmp_path / "s"
    study.mkdir()
    (study / "precious.txt").write_text("keep me")
    result = enginectl("run", str(REPO / "examples/hello/hello.yaml"), "-o", str(study))
    assert 1 == result.returncode
    assert "already exists" in result.stderr
    assert "keep me" == (study / "precious.txt").read_text()


def test_version_is_printed() -> None:
    result = enginectl("--version")
    assert 0 == result.returncode
    assert "enginectl, version " in result.stdout




def test_run_shows_progress_on_a_terminal_and_nothing_but_the_result_otherwise(
    tmp_path: Path,
) -> None:
    import pty
    import subprocess

    steps = "".join(f"  - {{name: s{i}, description: d, run: {{cmd: 'sleep 0.1'}}}}\n"
                    for i in range(20))
    spec = write_spec(tmp_path / "twenty.yaml",
                      f"description: {{name: twenty, description: 20 steps}}\nstudy:\n{steps}")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*ENGINECTL, "run", str(spec), "-o", str(tmp_path / "tty")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert 0 == proc.wait(timeout=60)
    os.close(master)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())  # colours
    assert "20/20 steps" in shown and "20 FINISHED" in shown and "ETA" in shown  # the bar
    assert re.search(r"/20 steps .*\d+ RUNNING", shown)  # counts per state while it ran
    assert re.search(r"\ntwenty: FINISHED in \d+\.\d s \(", shown)  # the end line, alone
    piped = enginectl("run", str(REPO / "examples/sweep/sweep.yaml"), "-o", str(tmp_path / "pipe"))
    assert 0 == piped.returncode
    [line] = piped.stderr.strip().splitlines()
    assert re.fullmatch(rf"sweep: FINISHED in \d+\.\d s \({re.escape(str(tmp_path / 'pipe'))}\)",
                        line)


def test_two_runs_of_one_spec_in_the_same_second_get_two_directories(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "hello.yaml", SPEC_CHAIN.format(code=0))
    import datetime as dt

    from engine.spec.loader import load_spec
    from engine.spec.naming import study_dir_for

    parsed = load_spec(str(spec))
    now = dt.datetime(2026, 12, 7, 4, 30, 0)
    first = study_dir_for(parsed, out_dir=None, now=now, cwd=str(tmp_path))
    Path(first).mkdir()
    second = study_dir_for(parsed, out_dir=None, now=now, cwd=str(tmp_path))
    assert second == f"{first}-2" and first.endswith("chain_20261207-043000")


def test_an_error_before_the_first_step_leaves_no_study_directory(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    study = tmp_path / "s"
    result = enginectl("run", str(REPO / "examples/hello/hello.yaml"), "-o", str(study),
                       "--nats-url", f"nats://127.0.0.1:{port}")
    assert 1 == result.returncode
    assert result.stderr.startswith("error: cannot connect to NATS"), result.stderr
    assert not study.exists()
