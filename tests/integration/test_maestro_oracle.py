"""Differential tests: Troupe's spec expansion against the real ``maestro run --dry``.

For every valid spec in the shared peer-spec corpus (plus Troupe's own quirk specs), the real
maestrowf 1.2.1 stages the study with ``maestro run --dry -fg -y -o DIR`` and Troupe expands it
with ``load_study(..., out_dir=DIR2)``. Maestro's pickled ExecutionGraph, its status.csv and the
scripts it writes are the oracle: instance names, workspaces relative to the study directory,
parents, commands (with the study directory normalised), descriptions and parameters must
match. All Maestro runs start at once in a module fixture, because ``--dry`` sleeps a second
per DAG level.
"""

from __future__ import annotations

import csv
import datetime
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("maestrowf", reason="the oracle needs the real maestrowf package")
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # tests/ is not a package; make 'tests.lulesh_standin' importable
    sys.path.insert(0, str(_ROOT))

from engine.errors import SpecError  # noqa: E402
from engine.spec import StudyGraph, load_study, make_safe_path  # noqa: E402
from tests.lulesh_standin import make_lulesh_standin  # noqa: E402

PEER = Path(os.environ.get("TROUPE_PEER_SPECS", "/work/shared/peer-specs"))
DATA = _ROOT / "tests" / "data" / "specs"
NOW = datetime.datetime(2024, 5, 6, 7, 8, 9)


@dataclass(frozen=True)
class Case:
    """One spec to stage with both tools."""

    id: str
    spec: Path
    pgen: tuple[str, ...] = ()  # extra CLI args: ('--pgen', FILE, '--pargs', 'K:V', ...)


def _cases() -> list[Case]:
    specs = sorted(p for p in (PEER / "maestro").glob("*.y*ml"))
    specs.append(PEER / "merlin" / "simple_chain.yaml")  # the one Merlin spec Maestro accepts
    cases = [Case(p.stem, p) for p in specs if p.exists()]
    cases.append(Case("quirks", DATA / "quirks.yaml"))
    pgen = ("--pgen", str(DATA / "pgen_cross.py"), "--pargs", "iters:3,4,5")
    cases.append(Case("pgen_study", DATA / "pgen_study.yaml", pgen))
    return cases


CASES = _cases()
INVALID = sorted((PEER / "maestro" / "invalid").glob("*.yml")) + [DATA / "ws_before_generated.yaml"]
if not (PEER / "maestro").is_dir():
    pytest.skip(f"peer specs not found at {PEER}", allow_module_level=True)


@dataclass
class Run:
    """A finished ``maestro run``."""

    out: Path
    cwd: Path
    returncode: int
    stderr: str


def _maestro(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    exe = [sys.executable, "-m", "maestrowf.maestro"]
    return subprocess.Popen(
        exe + args, cwd=cwd, env=env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def standin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which https://github.com/LLNL/LULESH.git is the local stand-in."""
    return {**os.environ, **make_lulesh_standin(tmp_path_factory.mktemp("lulesh"))}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory, standin_env: dict[str, str]) -> dict[str, Run]:
    """Stage every case (and every invalid spec) with the real Maestro, all in parallel."""
    procs = {}
    for case in CASES:
        cwd = tmp_path_factory.mktemp(f"maestro-{case.id}")
        args = ["run", "--dry", "-fg", "-y", "-o", str(cwd / "study"), *case.pgen, str(case.spec)]
        procs[case.id] = (cwd, _maestro(args, cwd=cwd, env=standin_env))
    for spec in INVALID:
        cwd = tmp_path_factory.mktemp(f"invalid-{spec.stem}")
        args = ["run", "--dry", "-fg", "-y", "-o", str(cwd / "study"), str(spec)]
        procs[f"invalid/{spec.name}"] = (cwd, _maestro(args, cwd=cwd, env=standin_env))
    runs = {}
    for key, (cwd, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        runs[key] = Run(out=cwd / "study", cwd=cwd, returncode=proc.returncode, stderr=err)
    return runs


@dataclass
class Staged:
    """What Maestro staged for one instance, paths relative to the study directory."""

    workspace: str
    parents: set[str]
    cmd: str
    restart: str
    description: str
    params: dict[str, str]
    procs: str


def _read_oracle(out: Path) -> dict[str, Staged]:
    (pkl,) = [p for p in out.glob("*.pkl") if not p.name.endswith(".study.pkl")]
    with open(pkl, "rb") as fh:
        graph = pickle.load(fh)
    parents: dict[str, set[str]] = {name: set() for name in graph.values}
    for parent, children in graph.adjacency_table.items():
        for child in children:
            if parent != "_source":
                parents[child].add(parent)
    staged = {}
    for name, record in graph.values.items():
        if record is None:  # _source
            continue
        run = record.step.run
        staged[name] = Staged(
            workspace=os.path.relpath(record.workspace.value, out),
            parents=parents[name],
            cmd=_norm(run["cmd"], out),
            restart=_norm(run["restart"], out),
            description=record.step.description,
            params={k: str(v) for k, v in record.params.items()},
            procs=str(run.get("procs") or ""),
        )
    return staged


def _norm(text: str, study_dir: Path | str) -> str:
    return text.replace(str(study_dir), "<STUDY>")


def _ours(case: Case, run: Run, tmp_path: Path) -> StudyGraph:
    pgen = case.pgen[1] if case.pgen else None
    pargs = case.pgen[3:] if case.pgen else ()
    return load_study(case.spec, out_dir=str(tmp_path / "ours"), now=NOW, cwd=str(run.cwd),
                      pgen=pgen, pargs=pargs)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_expansion_matches_maestro_dry_run(case: Case, oracle: dict[str, Run], tmp_path: Path):
    """Same instances, workspaces, parents, commands, descriptions and params as Maestro."""
    run = oracle[case.id]
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = _read_oracle(run.out)
    graph = _ours(case, run, tmp_path)
    ours = {s.name: s for s in graph.steps}

    assert sorted(theirs) == sorted(ours)
    for name, want in theirs.items():
        got = ours[name]
        assert want.workspace == os.path.relpath(got.workspace, graph.study_dir), name
        assert want.parents == set(got.parents), name
        assert want.cmd == _norm(got.cmd, graph.study_dir), name
        assert want.restart == _norm(got.restart, graph.study_dir), name
        assert want.description == got.description, name
        assert want.params == dict(got.params), name
        assert want.procs == str(got.resources.procs or ""), name


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scripts_and_status_match_maestro(case: Case, oracle: dict[str, Run], tmp_path: Path):
    """The scripts Maestro wrote hold our commands; status.csv lists our instances."""
    run = oracle[case.id]
    assert run.returncode == 0, run.stderr[-2000:]
    graph = _ours(case, run, tmp_path)
    local = graph.batch["type"] == "local"
    shell = graph.batch.get("shell", "/bin/bash")
    for step in graph.steps:
        ws = run.out / os.path.relpath(step.workspace, graph.study_dir)
        script = ws / f"{make_safe_path(step.name)}{'.sh' if local else '.slurm.sh'}"
        assert script.is_file(), script
        if local:
            want = f"#!{shell}\n\n{_norm(step.cmd, graph.study_dir)}\n"
            assert want == _norm(script.read_text(), run.out)
    with open(run.out / "status.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["Step Name"] for r in rows) == sorted(s.name for s in graph.steps)
    by_name = {s.name: s for s in graph.steps}
    for row in rows:
        params = dict(kv.split(":", 1) for kv in row["Params"].split(";") if kv)
        assert params == dict(by_name[row["Step Name"]].params)


def test_git_dependency_lands_where_maestro_clones_it(oracle: dict[str, Run], tmp_path: Path):
    case = next(c for c in CASES if c.id == "lulesh_sample1_unix")
    run = oracle[case.id]
    graph = _ours(case, run, tmp_path)
    (dep,) = graph.git
    assert (run.out / "LULESH" / "Makefile").is_file()
    assert "LULESH" == os.path.relpath(dep.target, graph.study_dir)
    assert ("https://github.com/LLNL/LULESH.git", "2.0.3") == (dep.url, dep.tag)


@pytest.mark.parametrize("spec", INVALID, ids=[p.name for p in INVALID])
def test_specs_maestro_rejects_are_rejected(spec: Path, oracle: dict[str, Run], tmp_path: Path):
    run = oracle[f"invalid/{spec.name}"]
    assert run.returncode != 0
    with pytest.raises(SpecError):
        load_study(spec, out_dir=str(tmp_path / "ours"), now=NOW, cwd=str(tmp_path))
