"""FluxAdapter against the stand-in ``flux`` CLI (tests/fakes/flux), plus its pure parts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapters.base import JobOutcome, SubmitError
from adapters.flux import FluxAdapter
from adapters.flux_script import (
    f58_decode, f58_encode, flux_script, parse_flux_jobs, parse_jobid, submit_options,
    walltime_seconds,
)  # fmt: skip
from tests.adapters.support import FIXTURES, make_step, request

FAST = dict(watch_interval=0.02, reconcile_interval=0.2, lost_after=5.0, use_bindings=False)
VECTORS = [(0, "ƒ1"), (1, "ƒ2"), (57, "ƒz"), (1234, "ƒNH"), (1888, "ƒZZ"), (3363, "ƒzz"),
           (3364, "ƒ211"), (65535, "ƒLUv"), (4294967295, "ƒ7YXq9G"), (633528662, "ƒxyzzy"),
           (6731191091817518, "ƒuZZybuNNy"), (2**64 - 1, "ƒjpXCZedGfVQ")]  # fmt: skip


def adapter(**kw: Any) -> FluxAdapter:
    return FluxAdapter({"queue": ""}, **{**FAST, **kw})


def step(tmp_path: Path, name: str, cmd: str, **res: Any) -> Any:
    return make_step(tmp_path / "study", name, cmd, **({"procs": 1} | res))


async def run_to_end(a: FluxAdapter, s: Any, **kw: Any) -> Any:
    handle = await a.submit(request(s, **kw))
    with anyio.fail_after(20):
        return handle, await a.wait(handle)


# --- pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "text"), VECTORS)
def test_f58_matches_flux_test_vectors(n: int, text: str) -> None:
    assert (text, n, n) == (f58_encode(n), f58_decode(text), f58_decode("f" + text[1:]))


def test_job_ids_are_read_in_f58_with_either_prefix_and_in_decimal() -> None:
    assert [1234, 1234, 1234] == [parse_jobid("ƒNH"), parse_jobid("fNH"), parse_jobid("1234")]
    with pytest.raises(ValueError, match=r"^not an F58 job id: 'x0'$"):
        parse_jobid("x0")


@pytest.mark.parametrize(("walltime", "seconds"), [
    (30, 1800), ("30", 1800), ("00:10:00", 600.0), ("1:30", 90.0), ("", 0), (None, 0),
])  # fmt: skip
def test_bare_walltime_numbers_are_minutes(walltime: Any, seconds: float) -> None:
    assert seconds == walltime_seconds(walltime)


def test_flux_script_has_maestros_directives_and_flux_run(tmp_path: Path) -> None:
    s = step(tmp_path, "hello world", "$(LAUNCHER)[2p] app\n", nodes=1, procs=4, walltime=30)
    assert flux_script(s, {"queue": "pdebug", "bank": "b"}).splitlines() == [
        "#!/bin/bash",
        "#flux: -N 1",
        "#flux: -n 4",
        "#flux: -t 1800s",
        "#flux: -q pdebug",
        "#flux: --bank=b",
        '#flux: --job-name="hello_world"',
        "#flux: --output=hello_world.{{id}}.out",
        "#flux: --error=hello_world.{{id}}.err",
        "",
        "flux run -n 2 app",
        "",
    ]


def test_submit_options_give_one_task_with_all_the_cores(tmp_path: Path) -> None:
    s = step(tmp_path, "a", "x", procs=4, cores_per_task=2, walltime="00:01:00",
             priority="high")  # fmt: skip
    opts = submit_options(s, {"bank": "b"}, key="k/a/1")
    assert opts == ["--job-name=k/a/1", f"--cwd={s.workspace}", "--output=a.{{id}}.out",
                    "--error=a.{{id}}.err", "-n", "1", "-c", "8", "--time-limit=60.0s",
                    "--bank=b", "--urgency=24"]  # fmt: skip


def test_multi_node_steps_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(SubmitError, match=(
        r"^2 nodes need a nested Flux instance \(flux batch\); this adapter submits .*one node$"
    )):  # fmt: skip
        submit_options(step(tmp_path, "a", "x", nodes=2, procs=2), {}, key="k")


def test_flux_jobs_json_fixtures_parse_to_outcomes() -> None:
    states = parse_flux_jobs((FIXTURES / "flux_jobs_all.json").read_text())
    by_name = {j["name"]: j["id"] for j in
               json.loads((FIXTURES / "flux_jobs_all.json").read_text())["jobs"]}
    got = {name: (states[i].outcome, states[i].exit_code) for name, i in by_name.items()}
    assert got == {
        "ok": (JobOutcome.COMPLETED, 0), "running": (JobOutcome.COMPLETED, 0),
        "exit3": (JobOutcome.FAILED, 3), "killme": (JobOutcome.CANCELLED, 143),
        "held": (JobOutcome.CANCELLED, -128), "slow": (JobOutcome.TIMEOUT, 142),
    }


def test_flux_jobs_json_of_active_jobs_and_of_one_job() -> None:
    active = parse_flux_jobs((FIXTURES / "flux_jobs_active.json").read_text())
    assert {None} <= {s.outcome for s in active.values()}
    (one,) = parse_flux_jobs((FIXTURES / "flux_jobs_one.json").read_text()).values()
    assert JobOutcome.COMPLETED == one.outcome


# --- against the stand-in -------------------------------------------------------------


async def test_a_job_completes(tmp_path: Path, fake_flux: Path) -> None:
    s = step(tmp_path, "hello", "echo hi\n")  # (the stand-in has no `flux run`)
    handle, result = await run_to_end(adapter(), s)
    assert handle.job_id.startswith("ƒ")
    assert (JobOutcome.COMPLETED, 0) == (result.outcome, result.exit_code)
    outs = list(Path(s.workspace).glob("hello.f*.out"))  # FLUX_F58_FORCE_ASCII: f prefix
    assert ["hi\n"] == [p.read_text() for p in outs]


async def test_a_failing_job_reports_its_exit_code(tmp_path: Path, fake_flux: Path) -> None:
    _, result = await run_to_end(adapter(), step(tmp_path, "bad", "exit 3\n"))
    assert (JobOutcome.FAILED, 3) == (result.outcome, result.exit_code)


async def test_a_job_over_its_time_limit_times_out(tmp_path: Path, fake_flux: Path) -> None:
    s = step(tmp_path, "slow", "sleep 30\n", walltime="0:0:1")
    _, result = await run_to_end(adapter(), s)
    assert (JobOutcome.TIMEOUT, 142) == (result.outcome, result.exit_code)
    (record,) = [json.loads(p.read_text()) for p in (fake_flux / "jobs").glob("*.json")]
    assert 1.0 == record["duration"]  # --time-limit=1.0s


async def test_cancel_of_a_running_job_ends_it_canceled(tmp_path: Path, fake_flux: Path) -> None:
    a = adapter()
    s = step(tmp_path, "long", "sleep 30\n")
    handle = await a.submit(request(s))
    async with anyio.create_task_group() as tg:
        results: list[Any] = []

        async def waiter() -> None:
            with anyio.fail_after(20):
                results.append(await a.wait(handle))

        tg.start_soon(waiter)
        await _until_state(fake_flux, "RUN")
        await a.cancel(handle)
    assert (JobOutcome.CANCELLED, 143) == (results[0].outcome, results[0].exit_code)


async def test_cancel_of_a_held_job_ends_it_canceled_before_start(tmp_path: Path,
                                                                  fake_flux: Path) -> None:
    a = adapter()
    handle = await a.submit(request(step(tmp_path, "held", "true\n", priority="HELD")))
    await _until_state(fake_flux, "SCHED")
    await a.cancel(handle)
    with anyio.fail_after(10):
        result = await a.wait(handle)
    assert (JobOutcome.CANCELLED, -128) == (result.outcome, result.exit_code)


async def test_cancelling_an_ended_job_is_a_no_op(tmp_path: Path, fake_flux: Path) -> None:
    a = adapter()
    handle, _ = await run_to_end(a, step(tmp_path, "quick", "true\n"))
    await a.cancel(handle)


async def _until_state(state_dir: Path, wanted: str) -> None:
    with anyio.fail_after(10):
        while True:
            states = [json.loads(p.read_text())["state"]
                      for p in (state_dir / "jobs").glob("*.json")] if state_dir.exists() else []
            if wanted in states:
                return
            await anyio.sleep(0.02)


async def test_find_readopts_a_job_by_its_key(tmp_path: Path, fake_flux: Path) -> None:
    s = step(tmp_path, "hello", "sleep 0.5\n")
    handle = await adapter().submit(request(s))
    restarted = adapter()
    assert handle == await restarted.lookup(request(s))
    assert await restarted.lookup(request(s, attempt=2)) is None
    with anyio.fail_after(10):
        assert JobOutcome.COMPLETED == (await restarted.wait(handle)).outcome


async def test_rejected_submission_fails_with_fluxs_message(tmp_path: Path, fake_flux: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TROUPE_FAKE_FLUX_DIR")
    with pytest.raises(SubmitError,
                       match=r"^flux-submit: ERROR: TROUPE_FAKE_FLUX_DIR is not set \(.*\)$"):
        await adapter().submit(request(step(tmp_path, "a", "true\n")))


def test_stand_in_prints_ascii_ids_when_asked(tmp_path: Path, fake_flux: Path) -> None:
    out = subprocess.run(["flux", "job", "id", "--to=f58", "1234"], capture_output=True,
                         text=True, check=True, env={**_env(), "FLUX_F58_FORCE_ASCII": "1"})
    assert "fNH\n" == out.stdout


def test_stand_in_reports_unknown_ids_like_flux(tmp_path: Path, fake_flux: Path) -> None:
    out = subprocess.run(["flux", "jobs", "--json", "ƒ2"], capture_output=True, text=True,
                         env=_env())
    assert (1, "", "JobID ƒ2 unknown\n") == (out.returncode, out.stdout, out.stderr)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


async def test_cancel_goes_through_the_python_bindings_when_they_import(
    tmp_path: Path, fake_flux: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """flux.job.cancel(handle, id) is called; this stand-in module forwards to the CLI's state."""
    import importlib.machinery
    import sys
    import types

    calls: list[int] = []
    flux_mod = types.ModuleType("flux")
    flux_mod.__spec__ = importlib.machinery.ModuleSpec("flux", None)
    job_mod = types.ModuleType("flux.job")

    def cancel(handle: object, job: int) -> None:
        calls.append(job)
        (fake_flux / "jobs" / f"{job}.cancel").write_text("via bindings")

    job_mod.cancel = cancel  # type: ignore[attr-defined]
    flux_mod.Flux = lambda *uri: object()  # type: ignore[attr-defined]
    flux_mod.job = job_mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flux", flux_mod)
    monkeypatch.setitem(sys.modules, "flux.job", job_mod)
    a = adapter(use_bindings=True)
    assert a.use_bindings
    handle = await a.submit(request(step(tmp_path, "long", "sleep 30\n")))
    await _until_state(fake_flux, "RUN")
    await a.cancel(handle)
    with anyio.fail_after(10):
        result = await a.wait(handle)
    assert ([parse_jobid(handle.job_id)], JobOutcome.CANCELLED) == (calls, result.outcome)
