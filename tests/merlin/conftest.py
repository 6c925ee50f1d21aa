"""The Merlin oracle: run a spec with the real Merlin 1.13.0 and with Troupe, and reduce each
study directory to a comparable ``layout``.

The real Merlin lives in a venv of its own (``tests/run.sh`` makes ``.venv-merlin`` and
exports ``$TROUPE_MERLIN``). ``merlin run --local`` needs no broker: Celery runs every task
eagerly, in process. Merlin writes its study to ``<OUTPUT_PATH>/<name>_<timestamp>``, with
OUTPUT_PATH relative to its CWD, so each run gets a fresh directory holding a copy of the
spec and its stand-ins, and the study directory is found afterwards as the parent of the one
``merlin_info/`` under it. Troupe runs the same copy with ``enginectl run SPEC -o OUT``.

``layout`` is what the differential tests compare: every directory under the study directory
(step workspaces, combo directories, sample directories) mapped to what the step wrote
there, with the tools' own bookkeeping left out. docs/merlin-oracle.md explains the choices.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO, enginectl

__all__ = ["find_merlin", "layout", "merlin_python", "run_merlin", "run_troupe"]

#: Where to look for the merlin executable when $TROUPE_MERLIN is unset, in order.
FALLBACK_MERLINS = (Path("/work/merlin-venv/bin/merlin"), REPO / ".venv-merlin" / "bin" / "merlin")
#: Top-level directories of a study that belong to the tools, not to a step.
TOOL_DIRS = {"merlin_info", "logs", "meta"}
#: Files in a workspace that are Merlin's bookkeeping, not the command's output.
MERLIN_FILES = {"MERLIN_STATUS.json", "status.lock"}
_PID_OUTPUT = re.compile(r"^(?P<stem>.+)\.\d+\.(out|err)$")  # Troupe's/Maestro's <name>.<pid>.out


def find_merlin() -> Path | None:
    """The merlin executable to use as the oracle: $TROUPE_MERLIN, else a known venv.

    Returns:
        Its path, or None when there is none (an unset or dangling $TROUPE_MERLIN falls
        back to nothing, so that a broken install is noticed rather than papered over).
    """
    configured = os.environ.get("TROUPE_MERLIN")
    candidates = [Path(configured)] if configured else list(FALLBACK_MERLINS)
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def merlin_python(merlin: Path) -> Path:
    """The python of the venv that holds ``merlin`` (to call Merlin's own loader)."""
    return merlin.parent / "python"


@pytest.fixture(scope="session")
def merlin_bin() -> Path:
    """The real merlin executable; skips without one, but fails under CI=true."""
    merlin = find_merlin()
    if merlin is None:
        why = "no merlin executable: set $TROUPE_MERLIN or run tests/run.sh (makes .venv-merlin)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return merlin


def _stage(spec: Path, where: Path, standins: Mapping[str, str] | None) -> Path:
    """Copy ``spec`` into the fresh directory ``where`` with its stand-ins beside it."""
    where.mkdir(parents=True)  # raises if it exists: every run starts from nothing
    copy = where / spec.name
    shutil.copyfile(spec, copy)
    for name, text in (standins or {}).items():
        target = where / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if name.endswith((".py", ".sh")) or "/bin/" in f"/{name}":
            target.chmod(0o755)
    return copy


def run_merlin(spec: Path, workdir: Path, samplesfile: Path | None = None, *,
               standins: Mapping[str, str] | None = None, timeout: float = 300) -> Path:
    """Run ``merlin run --local`` on a copy of ``spec`` made in the fresh ``workdir``.

    Args:
        spec: The study spec.
        workdir: A directory that must not exist yet; the spec, its stand-ins and Merlin's
            output (OUTPUT_PATH is relative to the CWD, which is this directory) go there.
        samplesfile: Passed as ``--samplesfile`` (overrides merlin.samples.file; no generate).
        standins: Files to write next to the spec copy, relative name -> text (``.py``, ``.sh``
            and anything under a ``bin/`` directory are made executable). A ``bin/`` stand-in
            directory is put first on PATH.
        timeout: Seconds before the run is abandoned (a harness error).

    Returns:
        The study directory Merlin created, ``<OUTPUT_PATH>/<name>_<timestamp>``.

    Raises:
        pytest.fail.Exception: Merlin exited non-zero or did not create exactly one study.
    """
    merlin = find_merlin()
    assert merlin is not None, "request the merlin_bin fixture first (it skips without merlin)"
    copy = _stage(spec, workdir, standins)
    home = workdir.parent / f"{workdir.name}-home"  # Merlin writes ~/.merlin/ on import
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PATH": _path_with_standins(workdir)}
    args = [str(merlin), "run", "--local", copy.name]
    if samplesfile is not None:
        args += ["--samplesfile", str(samplesfile)]
    proc = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    (workdir.parent / f"{workdir.name}-merlin.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"merlin run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    studies = [p.parent for p in workdir.rglob("merlin_info") if p.is_dir()]
    if len(studies) != 1:
        pytest.fail(f"merlin created {len(studies)} studies under {workdir}: {studies}")
    return studies[0]


def run_troupe(spec: Path, out: Path, samplesfile: Path | None = None, *,
               standins: Mapping[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``enginectl run SPEC -o OUT [--samplesfile F]`` on a copy of ``spec``.

    The copy and its stand-ins go to the fresh directory ``<out>-spec`` (so $(SPECROOT)
    holds the stand-ins, as for Merlin); that directory is also the CWD.

    Returns:
        The finished process (the caller asserts on its exit code and stderr).
    """
    where = out.parent / f"{out.name}-spec"
    copy = _stage(spec, where, standins)
    args = ["run", str(copy), "-o", str(out)]
    if samplesfile is not None:
        args += ["--samplesfile", str(samplesfile)]
    return enginectl(*args, cwd=where, timeout=timeout, env={"PATH": _path_with_standins(where)})


def _path_with_standins(where: Path) -> str:
    path = os.environ.get("PATH", "")
    return f"{where / 'bin'}{os.pathsep}{path}" if (where / "bin").is_dir() else path


def layout(study_dir: Path, specroot: Path | None = None, *,
           maestro: bool = False) -> dict[str, str]:
    """Every step directory of a study, mapped to what the step wrote in it.

    Keys are directories relative to ``study_dir``: step workspaces, combo directories and
    sample directories, including the intermediate ones (their value is then ``""``). The
    tools' own top-level directories (merlin_info, logs, meta) and Troupe's files (``.troupe*``,
    ``*.troupe.*``) are left out.

    A value lists, sorted and joined by ``"; "``:

    * the names of the files the command created (``MERLIN_FINISHED`` included);
    * ``<name>.out=<content>`` for the step's own output ``<name>.out``, recognised by the
      ``<name>.sh`` beside it; the study directory and ``specroot`` in the content become
      ``<STUDY>`` and ``<SPECROOT>``.

    Left out: ``*.sh``, ``*.err``, ``MERLIN_STATUS.json``, ``status.lock`` and pid-named
    outputs ``<name>.<pid>.out``/``.err`` (Maestro's naming). With ``maestro`` (a spec
    Troupe reads as a Maestro spec: no ``merlin:`` block, no Merlin key or token), the
    pid-named output is the step's output instead, and ``MERLIN_FINISHED`` is left out.
    """
    result: dict[str, str] = {}
    for here, dirs, files in os.walk(study_dir):
        rel = Path(here).relative_to(study_dir)
        dirs[:] = sorted(d for d in dirs if not _tool_owned(d) and not (rel == Path(".") and d in TOOL_DIRS))
        if rel == Path("."):
            continue
        result[rel.as_posix()] = _describe(Path(here), files, study_dir, specroot, maestro)
    return result


def _tool_owned(name: str) -> bool:
    return name.startswith(".troupe") or ".troupe." in name


def _describe(where: Path, files: list[str], study_dir: Path, specroot: Path | None,
              maestro: bool = False) -> str:
    stems = {f[: -len(".sh")] for f in files if f.endswith(".sh")}
    items = []
    for name in sorted(files):
        pid = _PID_OUTPUT.match(name)
        own = pid and pid["stem"] in stems
        if maestro and own and name.endswith(".out"):
            pass  # Maestro's <name>.<pid>.out is the step's output
        elif (name.endswith((".sh", ".err")) or name in MERLIN_FILES or _tool_owned(name)
                or own or (maestro and name == "MERLIN_FINISHED")):
            continue
        if own and maestro and name.endswith(".out"):
            text = (where / name).read_text(errors="replace")
            for path in sorted(p for p in (str(study_dir), str(specroot or "")) if p):
                text = text.replace(path, "<STUDY>" if path == str(study_dir) else "<SPECROOT>")
            items.append(f"{pid['stem']}.out={text!r}")
        elif name.endswith(".out") and name[: -len(".out")] in stems:
            text = (where / name).read_text(errors="replace")
            places = {str(study_dir): "<STUDY>"}
            if specroot is not None:
                places[str(specroot)] = "<SPECROOT>"
            for path in sorted(places, key=len, reverse=True):  # one may be a prefix of the other
                text = text.replace(path, places[path])
            items.append(f"{name}={text!r}")
        else:
            items.append(name)
    return "; ".join(items)
