"""Hostile process tests: a SIGKILLed engine leaves nothing running, one engine per state
directory, and the state directory's secrets are the engine's own.

Every test runs real ``enginectl`` processes and waits on real process death (read from
/proc, with a deadline), never on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.natsserver import find_server_binary
from tests.conftest import ENGINECTL, alive, enginectl, wait_for_path
from tests.engine_proc import Engine

DEADLINE = 15.0

SPEC_SLEEPER = """
description: {name: sleeper, description: one step that would sleep for five minutes}
study:
  - name: nap
    description: records its pid and its child's, then sleeps
    run: {cmd: "echo $$ > step.pid; sleep 300 & echo $! > sleep.pid; wait"}
"""


def wait_dead(pids: dict[str, int], timeout: float = DEADLINE) -> dict[str, int]:
    """Wait until every pid is gone (or a zombie); return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := {k: p for k, p in pids.items() if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def read_pid(path: Path) -> int:
    """A pid from a file its writer may still be writing."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return int(path.read_text().strip())
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def sigkill_all(pids: dict[str, int]) -> None:
    """Clean-up for a failing test: SIGKILL whatever is left (and a step's group)."""
    for pid in pids.values():
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "state")
    try:
        yield eng
    finally:
        eng.stop()


# --- 1. a SIGKILLed engine leaves no server and no step behind ----------------------


def test_sigkilled_run_takes_its_nats_server_and_running_step_with_it(tmp_path: Path) -> None:
    spec = tmp_path / "sleeper.yaml"
    spec.write_text(SPEC_SLEEPER)
    study = tmp_path / "study"
    run = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    pids = {"run": run.pid}
    try:
        wait_for_path(study / "nap" / "sleep.pid", timeout=60)
        pids["nats-server"] = read_pid(study / "meta" / "nats" / "nats-server.pid")
        pids["step"] = read_pid(study / "nap" / "step.pid")
        pids["sleep"] = read_pid(study / "nap" / "sleep.pid")
        assert {} == {k: p for k, p in pids.items() if not alive(p)}, "all running first"
        run.kill()
        run.wait()
        del pids["run"]
        assert {} == wait_dead(pids)
    finally:
        run.kill()
        run.wait()
        sigkill_all(pids)


def test_sigkilled_serve_takes_its_nats_server_with_it(engine: Engine) -> None:
    engine.start()
    server = read_pid(engine.state / "nats" / "nats-server.pid")
    assert alive(server)
    engine.kill()
    assert {} == wait_dead({"nats-server": server})


def test_a_cleanly_finished_run_leaves_no_watchdog_behind(tmp_path: Path) -> None:
    """The step watchdog is a child of ``run``; it exits with the study."""
    spec = tmp_path / "quick.yaml"
    spec.write_text(SPEC_SLEEPER.replace("sleep 300", "sleep 0"))
    result = enginectl("run", str(spec), "-o", str(tmp_path / "study"))
    assert 0 == result.returncode, result.stderr
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
                 and str(tmp_path) in _cmdline(int(p))]
    assert [] == leftovers


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# --- 2. one engine per state directory ----------------------------------------------


def test_second_serve_on_the_same_state_dir_refuses_and_touches_nothing(engine: Engine) -> None:
    engine.start()
    assert engine.proc is not None
    files = {p.name: p.read_bytes() for p in engine.state.iterdir() if p.is_file()}
    server = read_pid(engine.state / "nats" / "nats-server.pid")
    second = subprocess.run([*ENGINECTL, "serve", "--state-dir", str(engine.state)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert 1 == second.returncode
    assert f"error: an engine is already running (pid {engine.proc.pid})\n" == second.stderr
    assert files == {p.name: p.read_bytes() for p in engine.state.iterdir() if p.is_file()}
    assert server == read_pid(engine.state / "nats" / "nats-server.pid")
    assert alive(server) and engine.proc.poll() is None
    listed = engine.ctl("list", timeout=30)
    assert 0 == listed.returncode, listed.stderr


def test_a_sigkilled_engine_never_blocks_a_restart(engine: Engine) -> None:
    engine.start()
    engine.kill()
    engine.start()  # the kernel dropped the dead engine's lock
    assert 0 == engine.ctl("list", timeout=30).returncode


# --- 3. the state directory and secrets ----------------------------------------------


def test_serve_tightens_its_own_state_dir_to_0700(engine: Engine) -> None:
    engine.state.mkdir(mode=0o755)
    os.chmod(engine.state, 0o755)
    engine.start()
    assert 0o700 == stat.S_IMODE(os.stat(engine.state).st_mode)


def _serve_refuses(state: Path) -> str:
    result = subprocess.run([*ENGINECTL, "serve", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert 1 == result.returncode, result.stderr
    assert 1 == len(result.stderr.splitlines()), result.stderr
    assert [] == sorted(p.name for p in state.iterdir()), "nothing written"
    return result.stderr


def test_serve_refuses_a_state_dir_others_can_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    stderr = _serve_refuses(state)
    assert stderr.startswith(f"error: state directory {state} is writable by others")
    assert 0o777 == stat.S_IMODE(os.stat(state).st_mode), "left as the user made it"


def test_serve_refuses_a_state_dir_another_user_owns(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    os.chown(state, 65534, 65534)
    stderr = _serve_refuses(state)
    assert stderr.startswith(f"error: state directory {state} is owned by uid 65534")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o400])
def test_serve_replaces_credentials_it_did_not_write_with_mode_0600(
        engine: Engine, mode: int) -> None:
    engine.state.mkdir(mode=0o700)
    planted = engine.state / "credentials.json"
    planted.write_text(json.dumps({"user": "troupe", "password": "known-to-others"}))
    os.chmod(planted, mode)
    engine.start()
    creds = json.loads(planted.read_text())
    assert "known-to-others" not in creds.values()
    assert 0o600 == stat.S_IMODE(os.stat(planted).st_mode)
    url = json.loads((engine.state / "client.json").read_text())["url"]
    refused = enginectl("list", "--nats-url", url, "--user", "troupe",
                        env={"TROUPE_NATS_PASSWORD": "known-to-others"}, timeout=30)
    assert 1 == refused.returncode


def test_serve_replaces_credentials_another_user_owns(engine: Engine) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    engine.state.mkdir(mode=0o700)
    planted = engine.state / "credentials.json"
    planted.write_text(json.dumps({"user": "troupe", "password": "known-to-others"}))
    os.chmod(planted, 0o600)
    os.chown(planted, 65534, 65534)
    engine.start()
    assert "known-to-others" not in json.loads(planted.read_text()).values()
    assert os.geteuid() == os.stat(planted).st_uid


def test_serve_keeps_its_own_credentials_across_restarts(engine: Engine) -> None:
    engine.start()
    first = (engine.state / "credentials.json").read_text()
    engine.stop()
    engine.start()
    assert first == (engine.state / "credentials.json").read_text()


def _nats_with(tmp_path: Path, *auth: str) -> Iterator[str]:
    """A nats-server (JetStream) started with the authorization arguments ``auth``."""
    work = tmp_path / "auth-nats"
    work.mkdir()
    proc = subprocess.Popen(
        [find_server_binary(), "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(work / "js"),
         *auth, "--ports_file_dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ports = work / f"nats-server_{proc.pid}.ports"
        wait_for_path(ports, timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                url = json.loads(ports.read_text())["nats"][0]
                break
            except ValueError:  # caught mid-write
                if time.monotonic() > deadline:
                    raise
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[str]:
    """A nats-server (JetStream) that wants user ``troupe``, password ``s3cret``."""
    yield from _nats_with(tmp_path, "--user", "troupe", "--pass", "s3cret")


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[str]:
    """A nats-server (JetStream) that wants the token ``t0ken``."""
    yield from _nats_with(tmp_path, "--auth", "t0ken")


@pytest.mark.parametrize("option", ["--password", "--token"])
@pytest.mark.parametrize("command", [["run", "x.yaml"], ["serve"], ["list"], ["status", "x"]])
def test_no_secret_is_accepted_on_the_command_line(command: list[str], option: str) -> None:
    result = enginectl(*command, "--nats-url", "nats://127.0.0.1:1", option, "visible")
    assert 0 != result.returncode
    assert f"No such option '{option}'" in result.stderr


def test_token_file_and_environment_variable_authenticate_a_run(
        tmp_path: Path, token_server: str) -> None:
    spec = tmp_path / "quick.yaml"
    spec.write_text(SPEC_SLEEPER.replace("sleep 300", "sleep 0"))
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    by_file = enginectl("run", str(spec), "-o", str(tmp_path / "a"), "--nats-url", token_server,
                        "--token-file", str(token_file), env={"TROUPE_NATS_TOKEN": "wrong"})
    assert 0 == by_file.returncode, by_file.stderr
    by_env = enginectl("run", str(spec), "-o", str(tmp_path / "b"), "--nats-url", token_server,
                       env={"TROUPE_NATS_TOKEN": "t0ken"})
    assert 0 == by_env.returncode, by_env.stderr
    wrong = enginectl("run", str(spec), "-o", str(tmp_path / "c"), "--nats-url", token_server,
                      env={"TROUPE_NATS_TOKEN": "wrong"})
    assert 1 == wrong.returncode


@pytest.mark.parametrize("mode", [0o622, 0o660, 0o666])
def test_a_client_refuses_a_client_json_others_can_write(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = state / "client.json"
    planted.write_text(json.dumps({"url": "nats://127.0.0.1:1"}))
    os.chmod(planted, mode)
    result = enginectl("list", "--state-dir", str(state), timeout=30)
    assert 1 == result.returncode
    assert [f"error: {planted}: others can write it; not trusted (it should be 0600, as "
            "'enginectl serve' writes it)"] == result.stderr.splitlines()


def test_password_file_and_environment_variable_authenticate_a_run(
        tmp_path: Path, auth_server: str) -> None:
    spec = tmp_path / "quick.yaml"
    spec.write_text(SPEC_SLEEPER.replace("sleep 300", "sleep 0"))
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret\n")
    by_file = enginectl("run", str(spec), "-o", str(tmp_path / "a"), "--nats-url", auth_server,
                        "--user", "troupe", "--password-file", str(pwfile),
                        env={"TROUPE_NATS_PASSWORD": "wrong"})  # the file wins
    assert 0 == by_file.returncode, by_file.stderr
    by_env = enginectl("run", str(spec), "-o", str(tmp_path / "b"), "--nats-url", auth_server,
                       "--user", "troupe", env={"TROUPE_NATS_PASSWORD": "s3cret"})
    assert 0 == by_env.returncode, by_env.stderr
    wrong = enginectl("run", str(spec), "-o", str(tmp_path / "c"), "--nats-url", auth_server,
                      "--user", "troupe", env={"TROUPE_NATS_PASSWORD": "wrong"})
    assert 1 == wrong.returncode


def test_password_file_and_environment_variable_authenticate_a_client(engine: Engine) -> None:
    engine.start()
    creds = json.loads((engine.state / "credentials.json").read_text())
    url = json.loads((engine.state / "client.json").read_text())["url"]
    pwfile = engine.state.parent / "pw"
    pwfile.write_text(creds["client"] + "\n")
    by_file = enginectl("list", "--nats-url", url, "--user", "client",
                        "--password-file", str(pwfile), timeout=30)
    assert 0 == by_file.returncode, by_file.stderr
    by_env = enginectl("list", "--nats-url", url, "--user", "client", timeout=30,
                       env={"TROUPE_NATS_PASSWORD": creds["client"]})
    assert 0 == by_env.returncode, by_env.stderr
