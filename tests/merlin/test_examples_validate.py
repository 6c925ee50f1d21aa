"""``enginectl validate`` agrees with Merlin's own loader on the 27 example workflows that ship
inside the merlin 1.13.0 package (merlin/examples/workflows/*/*.yaml).

Merlin's verdict is computed here, in the merlin venv's python, the way ``merlin run`` (and
``merlin run --dry``) judges a spec before it generates samples or queues a task: it builds a
``MerlinStudy``, which loads the spec (``MerlinSpec.load_specification``: defaults, then the
merlinspec.json schema), checks ``--vars`` and sample/parameter label clashes, expands
variables and reserved tokens, and stages the DAG through Maestro's ``Study``. What fails later
(``generate.cmd`` needing numpy or spellbook, a missing ``flux`` binary) is the machine's
business, not the spec's. Each spec is staged in a temporary CWD and HOME (OUTPUT_PATH is
CWD-relative, and optimization_basic's is under ``~``).

For an accepted spec the script also lists the tokens Merlin leaves for the shell: those still
in a staged step's ``cmd``/``restart`` that Merlin does not replace when the task runs (sample
columns, ``MERLIN_SAMPLE_*``/``MERLIN_GLOB_PATH``/``MERLIN_PATHS_ALL``, the exit codes,
``WORKSPACE`` and ``LAUNCHER`` are replaced then). Troupe must accept exactly the specs Merlin
accepts, without warning about any token Merlin resolves; rejected ones exit 1 with one
``error:`` line. docs/merlin-oracle.md lists the verdicts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import enginectl
from tests.merlin.conftest import find_merlin, merlin_python

#: How many example specs merlin 1.13.0 ships (guards the glob).
EXPECTED_EXAMPLES = 27
_UNRESOLVED = re.compile(r"unresolved token (\$\([^)\s]*\))")

_VERDICTS = r'''
import json, logging, os, re, sys, tempfile
logging.disable(logging.CRITICAL)
from merlin.spec.expansion import MERLIN_RESERVED
from merlin.study.study import MerlinStudy

TOKEN = re.compile(r"\$\([^()\s]*\)")
out_file, specs = sys.argv[1], sys.argv[2:]
verdicts = {}
for path in specs:
    os.chdir(tempfile.mkdtemp(prefix="verdict-"))
    try:
        study = MerlinStudy(path)
    except Exception as exc:
        verdicts[path] = {"accepted": False, "error": f"{type(exc).__name__}: {exc}"}
        continue
    runtime = MERLIN_RESERVED | {"WORKSPACE", "LAUNCHER", "MERLIN_STOP_WORKERS", "MERLIN_RAISE_ERROR"}
    runtime = {f"$({name})" for name in runtime | set(study.sample_labels)}
    left = set()
    for record in study.dag.maestro_values.values():
        if record is not None:
            for key in ("cmd", "restart"):
                left |= set(TOKEN.findall(record.step.run.get(key) or "")) - runtime
    verdicts[path] = {"accepted": True, "leftover": sorted(left)}
with open(out_file, "w") as fh:
    json.dump(verdicts, fh)
'''


def _examples_dir() -> Path | None:
    merlin = find_merlin()
    if merlin is None:
        return None
    found = sorted(merlin.parent.parent.glob("lib/python3*/site-packages/merlin/examples/workflows"))
    return found[0] if found else None


EXAMPLES = _examples_dir()
SPECS = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.glob("*/*.yaml")) if EXAMPLES else []


@pytest.fixture(scope="module")
def verdicts(merlin_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Merlin's verdict on every example, keyed by its path under examples/workflows."""
    if EXAMPLES is None:
        pytest.fail(f"no merlin/examples/workflows beside {merlin_bin}")
    work = tmp_path_factory.mktemp("verdicts")
    out = work / "verdicts.json"
    env = {**os.environ, "HOME": str(work), "TMPDIR": str(work)}
    proc = subprocess.run(
        [str(merlin_python(merlin_bin)), "-c", _VERDICTS, str(out), *(str(EXAMPLES / s) for s in SPECS)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"Merlin's loader could not be run ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {Path(k).relative_to(EXAMPLES).as_posix(): v for k, v in json.loads(out.read_text()).items()}


def test_merlin_ships_the_expected_examples(merlin_bin: Path) -> None:
    assert EXPECTED_EXAMPLES == len(SPECS), SPECS


@pytest.mark.parametrize("spec", SPECS or ["<no merlin>"])
def test_validate_agrees_with_merlins_loader(spec: str, verdicts: dict[str, dict], tmp_path: Path) -> None:
    verdict = verdicts[spec]
    path = EXAMPLES / spec
    result = enginectl("validate", str(path), cwd=tmp_path, env={"HOME": str(tmp_path)})
    if verdict["accepted"]:
        assert 0 == result.returncode, f"Merlin accepts {spec}; Troupe says:\n{result.stderr}"
        spurious = sorted(set(_UNRESOLVED.findall(result.stderr)) - set(verdict["leftover"]))
        assert [] == spurious, (f"Troupe warns about {spurious}, which Merlin resolves (it leaves only "
                                f"{verdict['leftover']}):\n{result.stderr}")
    else:
        assert 1 == result.returncode, f"Merlin rejects {spec} ({verdict['error']}); Troupe:\n{result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert 1 == len(lines) and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
